"""Running the same command again converges to a complete, correct output (issue #15, item 3).

Real CLI in subprocesses, real SQLite, real workers, real TIFFs: a deleted image folder, a truncated slice,
a slice altered in place, a slice `tessq verify` finds different, and an export that names what is missing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import tessq_cmd, write_tiff

IMAGES = ["a/one.tif", "a/two.tif", "b/three.tif"]


def make_tree(root: Path) -> None:
    for i, rel in enumerate(IMAGES):
        write_tiff(root / rel, 64, 96, seed=10 + i)


def cut_times(out: Path) -> dict[str, float]:
    """When each image folder was cut (batch_metadata.json's started_at)."""
    return {
        str(p.parent.relative_to(out)): json.loads(p.read_text())["started_at"]
        for p in out.rglob("batch_metadata.json")
    }


def first_slice(folder: Path) -> Path:
    meta = json.loads((folder / "metadata.json").read_text())
    return folder / meta["slices"][0]["file"]


@pytest.fixture
def done(tmp_path: Path, sqlite_env: dict[str, str]) -> tuple[Path, Path, dict[str, str]]:
    src, out = tmp_path / "in", tmp_path / "out"
    make_tree(src)
    run(src, out, sqlite_env, tmp_path)
    assert len(cut_times(out)) == 3
    return src, out, sqlite_env


def run(src: Path, out: Path, env: dict[str, str], cwd: Path, *extra: str) -> dict:
    proc = tessq_cmd(
        "run", str(src), str(out), "--min-size=32", "--workers=2", "--json", *extra, env=env, cwd=cwd, check=True
    )
    return json.loads(proc.stdout[proc.stdout.index("{") :])


def scan_json(src: Path, out: Path, env: dict[str, str], cwd: Path, *extra: str) -> dict:
    proc = tessq_cmd(
        "scan", str(src), "--out", str(out), "--min-size=32", "--json", *extra, env=env, cwd=cwd, check=True
    )
    return json.loads(proc.stdout)


def test_a_deleted_image_folder_is_cut_again_by_the_same_run_and_only_it(
    done: tuple[Path, Path, dict[str, str]],
) -> None:
    src, out, env = done
    before = cut_times(out)
    shutil.rmtree(out / "a/two")
    report = run(src, out, env, src.parent)
    after = cut_times(out)
    assert after.keys() == before.keys()
    assert after["a/two"] > before["a/two"]
    assert {k: v for k, v in after.items() if k != "a/two"} == {k: v for k, v in before.items() if k != "a/two"}
    assert report["batch_summary"]["successfully_processed"] == 3
    assert tessq_cmd("verify", env=env, cwd=src.parent).returncode == 0


def test_the_scan_names_missing_and_damaged_folders_with_the_reason(done: tuple[Path, Path, dict[str, str]]) -> None:
    src, out, env = done
    shutil.rmtree(out / "a/one")
    (out / "a/two/metadata.json").unlink()
    victim = first_slice(out / "b/three")
    victim.write_bytes(victim.read_bytes()[:-10])  # truncated
    summary = scan_json(src, out, env, src.parent)
    reasons = {d["file"]: d["reason"] for d in summary["damaged"]}
    assert reasons["a/one.tif"] == "output missing"
    assert reasons["a/two.tif"] == "metadata.json missing"
    assert reasons["b/three.tif"].startswith(f"slice {victim.name} size differs")
    assert summary["requeued_damaged"] == 3 and summary["already_done"] == 0 and summary["queued"] == 0
    again = scan_json(src, out, env, src.parent)  # queued already: not queued twice
    assert again["requeued_damaged"] == 0 and again["in_progress_or_failed"] == 3
    log = (out / "batch_processing.log").read_text()
    assert "queued again b/three.tif: slice" in log


def test_a_truncated_slice_is_redone_by_the_next_run(done: tuple[Path, Path, dict[str, str]]) -> None:
    src, out, env = done
    before = cut_times(out)
    victim = first_slice(out / "b/three")
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])
    run(src, out, env, src.parent)
    assert victim.read_bytes() == good
    after = cut_times(out)
    assert after["b/three"] > before["b/three"] and after["a/one"] == before["a/one"]
    assert tessq_cmd("verify", env=env, cwd=src.parent).returncode == 0


def test_a_slice_altered_in_place_is_found_by_the_hash_check(done: tuple[Path, Path, dict[str, str]]) -> None:
    src, out, env = done
    victim = first_slice(out / "a/one")
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0xFF  # same size: the stat-level check cannot see it
    victim.write_bytes(bytes(data))
    assert scan_json(src, out, env, src.parent)["requeued_damaged"] == 0
    deep = scan_json(src, out, env, src.parent, "--check-output=hash")
    assert deep["damaged"] == [{"file": "a/one.tif", "reason": f"slice {victim.name} hash differs from metadata.json"}]
    run(src, out, env, src.parent)
    assert scan_json(src, out, env, src.parent, "--check-output=hash")["requeued_damaged"] == 0
    assert tessq_cmd("verify", env=env, cwd=src.parent).returncode == 0


def test_an_image_verify_found_different_is_redone_by_the_next_run(done: tuple[Path, Path, dict[str, str]]) -> None:
    src, out, env = done
    victim = first_slice(out / "a/two")
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0xFF
    victim.write_bytes(bytes(data))
    verdict = tessq_cmd("verify", "--json", env=env, cwd=src.parent)
    assert verdict.returncode == 3 and json.loads(verdict.stdout)["different"] == ["a/two.tif"]
    before = cut_times(out)
    report = run(src, out, env, src.parent)
    assert cut_times(out)["a/two"] > before["a/two"]
    assert report["verification"]["different"] == 0
    assert tessq_cmd("verify", env=env, cwd=src.parent).returncode == 0


def test_retry_takes_the_images_verify_found_different(done: tuple[Path, Path, dict[str, str]]) -> None:
    src, out, env = done
    shutil.rmtree(out / "b/three")  # verify records a missing folder as different too
    assert tessq_cmd("verify", env=env, cwd=src.parent).returncode == 3
    assert "re-queued 0" in tessq_cmd("retry", "--type", "io", env=env, cwd=src.parent).stdout
    proc = tessq_cmd("retry", env=env, cwd=src.parent, check=True)
    assert "re-queued 1 " in proc.stdout
    tessq_cmd("workers", "--n", "1", "--drain", env=env, cwd=src.parent, check=True)
    assert (out / "b/three/metadata.json").is_file()
    assert tessq_cmd("verify", env=env, cwd=src.parent).returncode == 0


def test_export_names_the_missing_images_and_the_command_that_really_fixes_them(
    done: tuple[Path, Path, dict[str, str]],
) -> None:
    src, out, env = done
    shutil.rmtree(out / "a/one")
    shutil.rmtree(out / "b/three")
    failed = tessq_cmd("export", "--zip", env=env, cwd=src.parent)
    assert failed.returncode == 1
    message = " ".join(failed.stderr.split())
    assert "2 done image folder(s) are missing" in message and "a/one" in message and "b/three" in message
    assert f"tessq run {src} {out}" in message
    run(src, out, env, src.parent)  # what the message says to do
    ok = tessq_cmd("export", "--zip", env=env, cwd=src.parent)
    assert ok.returncode == 0, ok.stderr
    assert (out / "out_results.zip").is_file()


def test_a_new_output_folder_gets_every_image(done: tuple[Path, Path, dict[str, str]]) -> None:
    """Pointing the same input at another (empty) output folder cuts everything into it, not 'already done'."""
    src, _, env = done
    other = src.parent / "other_out"
    own_state = {k: v for k, v in env.items() if k != "TESSQ_WORKSPACE"}  # another OUT is another job: OUT/.tessq
    report = run(src, other, own_state, src.parent)
    assert report["batch_summary"]["successfully_processed"] == 3
    assert len(cut_times(other)) == 3


def test_scan_summary_rows_add_up_to_the_tiffs_found(tmp_path: Path, sqlite_env: dict[str, str]) -> None:
    """Every TIFF is counted in exactly one row of the scan summary, on the first scan and on later ones."""
    from tests.conftest import seed_tree

    src, out = tmp_path / "in", tmp_path / "out"
    seed_tree(src)

    def rows(s: dict) -> int:
        return (
            s["queued"]
            + s["requeued"]
            + s["requeued_damaged"]
            + s["already_done"]
            + s["in_progress_or_failed"]
            + sum(s["skipped"].values())
            + len(s["failed_at_scan"])
        )

    first = scan_json(src, out, sqlite_env, tmp_path)
    assert rows(first) == first["found"] == 7
    second = scan_json(src, out, sqlite_env, tmp_path)  # everything still queued; small/corrupt counted once
    assert rows(second) == second["found"] and second["in_progress_or_failed"] == 5
    tessq_cmd("workers", "--n", "2", "--drain", env=sqlite_env, cwd=tmp_path, check=True)
    third = scan_json(src, out, sqlite_env, tmp_path)
    assert rows(third) == third["found"] and third["already_done"] == 5 and third["in_progress_or_failed"] == 0


def test_output_problem_names_what_is_wrong(tmp_path: Path) -> None:
    from tessq.cut import core
    from tessq.jobs import scan
    from tessq.options import SliceOptions

    source = write_tiff(tmp_path / "photo.tif", 64, 96, seed=3)
    folder = tmp_path / "photo"
    result = core.tessellate_image(source, folder, SliceOptions(num_pieces=4, min_size=1))
    n, size = result["slices"], result["bytes_out"]
    assert scan.output_problem(folder, n, size) is None
    assert scan.output_problem(folder, n, size, "hash") is None
    assert scan.output_problem(folder, None, None) is None  # no table record: metadata.json is the reference
    assert scan.output_problem(tmp_path / "nowhere", n, size) == "output missing"
    records = json.loads((folder / "metadata.json").read_text())["slices"]
    (folder / records[1]["file"]).unlink()
    (folder / records[2]["file"]).write_bytes(b"short")
    assert scan.output_problem(folder, n, size) == f"slice {records[1]['file']} missing (and 1 more)"
    assert scan.output_problem(folder, n, size, "none") is None


def test_many_done_images_are_checked_in_parallel_with_the_same_verdicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tessq.jobs import db, scan
    from tessq.jobs.settings import options_fingerprint
    from tessq.options import SliceOptions

    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(6):
        write_tiff(src / f"img_{i}.tif", 40, 48, seed=i)
    db.open_database(f"sqlite:///{tmp_path}/ws/tessq.db")
    db.create_schema()
    options = SliceOptions(min_size=1, num_pieces=2)
    scan.scan_tree(src, out, options, options_fingerprint(options))
    with db.session():  # as if cut: 2 slices of 10 bytes each
        db.Image.update(status=db.DONE, n_slices=2, bytes_out=20, options_hash=options_fingerprint(options)).execute()
    for i in range(6):
        (out / f"img_{i}").mkdir(parents=True)
        (out / f"img_{i}/metadata.json").write_text(
            json.dumps({"slices": [{"file": f"slice_{k}_0_0_1_1.png", "bytes": 10} for k in range(2)]})
        )
        for k in range(2 if i % 2 else 1):  # the even ones lost a slice
            (out / f"img_{i}/slice_{k}_0_0_1_1.png").write_bytes(b"x" * 10)
    monkeypatch.setattr(scan, "CHECK_PARALLEL_MIN", 1)
    summary = scan.scan_tree(src, out, options, options_fingerprint(options))
    assert summary.damaged == [
        {"file": f"img_{i}.tif", "reason": "slice slice_1_0_0_1_1.png missing"} for i in (0, 2, 4)
    ]
    assert summary.requeued_damaged == 3 and summary.already_done == 3 and len(summary.enqueue_ids) == 3


def test_a_done_image_whose_source_and_folder_are_both_gone_no_longer_blocks_the_export(
    done: tuple[Path, Path, dict[str, str]],
) -> None:
    src, out, env = done
    (src / "a/two.tif").unlink()
    shutil.rmtree(out / "a/two")  # nothing left to redo it from
    (src / "b/three.tif").unlink()  # its folder stays: it keeps its output, and ships
    summary = scan_json(src, out, env, src.parent)
    assert summary["forgotten"] == [{"file": "a/two.tif", "reason": "output missing; source gone"}]
    assert summary["requeued_damaged"] == 0 and summary["queued"] == 0
    ok = tessq_cmd("export", "--zip", env=env, cwd=src.parent)
    assert ok.returncode == 0, ok.stderr
