"""Output folders that would collide (issue #19 item 2): real CLI runs, checked on disk and in the SQLite file.

(a) an image `site.tif` beside an input folder `site/`, (b) names that sanitising makes equal, (c) two jobs
writing one OUT, and the commit that must never delete another image's output.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path

import numpy as np
import tifffile

from tessq.jobs import scan
from tessq.storage import folder as tfolder
from tests.conftest import tessq_cmd, write_tiff

MIN = "--min-size=32"


def rows(base: Path) -> dict[str, dict]:
    """The image rows, read from the SQLite file directly (wherever the workspace keeps it)."""
    (path,) = [p for p in base.rglob("tessq.db") if p.is_file()]
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return {r["rel_path"]: dict(r) for r in con.execute("SELECT * FROM image")}
    finally:
        con.close()


def source_of(image_dir: Path) -> str:
    return json.loads((image_dir / "metadata.json").read_text())["source"]["relative_path"]


def reassembles(image_dir: Path, source: Path) -> bool:
    meta = json.loads((image_dir / "metadata.json").read_text())
    want = tifffile.imread(source)
    got = np.zeros_like(want)
    for rec in meta["slices"]:
        f = image_dir / rec["file"]
        px = tifffile.imread(f) if f.suffix == ".tif" else np.asarray(__import__("PIL.Image").Image.open(f))
        got[rec["y0"] : rec["y1"], rec["x0"] : rec["x1"]] = px
    return bool(np.array_equal(got, want))


def run(src: Path, out: Path, env: dict, cwd: Path, *extra: str) -> None:
    proc = tessq_cmd("run", str(src), str(out), MIN, "--workers", "1", *extra, env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_output_folder_names_are_unique_by_construction() -> None:
    names = scan.output_folder_names([".hid.tif", "_.hid.tif", "site.tif", "x.tif"], taken={"site"})
    assert len({n.lower() for n in names.values()}) == 4
    assert names["_.hid.tif"] == "_.hid"  # the name sanitising left alone keeps its folder
    assert names[".hid.tif"].startswith("_.hid~")
    assert names["site.tif"] == "site.tif" and names["x.tif"] == "x"
    assert scan.safe_component("a\\..\\..\\pwn") == "a_.._.._pwn"
    assert "\n" not in scan.safe_component("evil\nname")
    assert scan.colliding_outputs(["a", "a/b", "c", "C"]) == {1: "a", 3: "c"}


def test_image_beside_an_input_folder_of_its_name_keeps_the_nested_images(tmp_path: Path, sqlite_env: dict) -> None:
    """(a) The issue's case: OUT/site held site/'s images' folders; touching site.tif replaced it."""
    src, out = tmp_path / "in", tmp_path / "out"
    details = [write_tiff(src / "site" / f"detail_{i}.tif", seed=i) for i in range(3)]
    run(src, out, sqlite_env, tmp_path)
    write_tiff(src / "site.tif", seed=9)
    run(src, out, sqlite_env, tmp_path)
    os.utime(src / "site.tif")  # touch: redone
    run(src, out, sqlite_env, tmp_path)
    table = rows(tmp_path)
    assert all(r["status"] == "done" for r in table.values()), table
    assert table["site.tif"]["out_rel"] == "site.tif"
    for i, d in enumerate(details):
        folder = out / table[f"site/detail_{i}.tif"]["out_rel"]
        assert folder.parent == out / "site" and reassembles(folder, d)
    assert source_of(out / "site.tif") == "site.tif" and reassembles(out / "site.tif", src / "site.tif")


def test_folder_created_beside_a_done_image_moves_that_image(tmp_path: Path, sqlite_env: dict) -> None:
    """The other order: site.tif was done as OUT/site before folder site/ appeared. It is cut again as
    OUT/site.tif (its old folder is left, never deleted) and site/'s images get their own folders."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_tiff(src / "site.tif", seed=9)
    run(src, out, sqlite_env, tmp_path)
    assert rows(tmp_path)["site.tif"]["out_rel"] == "site"
    write_tiff(src / "site" / "detail.tif", seed=1)
    run(src, out, sqlite_env, tmp_path)
    os.utime(src / "site.tif")
    run(src, out, sqlite_env, tmp_path)
    table = rows(tmp_path)
    assert {r["status"] for r in table.values()} == {"done"}
    assert table["site.tif"]["out_rel"] == "site.tif" and reassembles(out / "site.tif", src / "site.tif")
    assert reassembles(out / table["site/detail.tif"]["out_rel"], src / "site/detail.tif")


def test_names_sanitised_alike_get_distinct_folders(tmp_path: Path, sqlite_env: dict) -> None:
    """(b) `.hid.tif` and `_.hid.tif` both mapped to `_.hid`: one was lost."""
    src, out = tmp_path / "in", tmp_path / "out"
    write_tiff(src / ".hid.tif", seed=1)
    write_tiff(src / "_.hid.tif", seed=2)
    run(src, out, sqlite_env, tmp_path)
    table = rows(tmp_path)
    assert {r["status"] for r in table.values()} == {"done"}
    assert len({r["out_rel"] for r in table.values()}) == 2
    for rel, r in table.items():
        assert source_of(out / r["out_rel"]) == rel and reassembles(out / r["out_rel"], src / rel)


def test_second_job_into_the_same_output_is_refused(tmp_path: Path, sqlite_env: dict) -> None:
    """(c) Two jobs writing one OUT with the same relative paths overwrote each other."""
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    for i in range(3):
        write_tiff(a / f"img_{i}.tif", seed=i)
        write_tiff(b / f"img_{i}.tif", seed=10 + i)
    run(a, out, sqlite_env, tmp_path)
    for target in (out, out / "sub"):
        proc = tessq_cmd("scan", str(b), "--out", str(target), MIN, env=sqlite_env, cwd=tmp_path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        assert re.search(r"already (written by the job of|holds the output of another input)", proc.stderr)
    for i in range(3):
        assert source_of(out / f"img_{i}") == f"img_{i}.tif" and reassembles(out / f"img_{i}", a / f"img_{i}.tif")


def test_commit_never_replaces_another_images_output(tmp_path: Path, sqlite_env: dict) -> None:
    """Two workspaces (two status tables) cutting into one OUT: the second job's commits meet folders holding
    the first job's images and fail as output_collision; the first job's folders stay intact."""
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    for i in range(2):
        write_tiff(a / f"img_{i}.tif", seed=i)
        write_tiff(b / f"img_{i}.tif", seed=10 + i)
    run(a, out, sqlite_env, tmp_path)
    other = dict(sqlite_env, TESSQ_WORKSPACE=str(tmp_path / "ws2"))
    (tmp_path / "ws2").mkdir()
    proc = tessq_cmd("run", str(b), str(out), MIN, "--workers", "1", env=other, cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    (db2,) = (tmp_path / "ws2").rglob("tessq.db")
    con = sqlite3.connect(str(db2))
    got = con.execute("SELECT status, error_type, error_message FROM image").fetchall()
    con.close()
    assert {(s, t) for s, t, _ in got} == {("failed", "output_collision")}, got
    assert all("holds the output of another image" in m for _, _, m in got)
    for i in range(2):
        assert reassembles(out / f"img_{i}", a / f"img_{i}.tif")
    assert not [p for p in out.rglob("*") if ".tessq-" in p.name]


def test_replace_problem_refuses_folders_holding_image_folders(tmp_path: Path) -> None:
    final, new = tmp_path / "site", tmp_path / ".site.tessq-tmp.x"
    (final / "detail").mkdir(parents=True)
    meta = {"schema": "tessq.metadata", "source": {"relative_path": "site/detail.tif"}}
    (final / "detail" / "metadata.json").write_text(json.dumps(meta))
    new.mkdir()
    assert "other images' output folders (detail)" in tfolder.replace_problem(final, new)
    (final / "detail" / "metadata.json").unlink()
    assert tfolder.replace_problem(final, new) is None  # a leftover holding no image may go
