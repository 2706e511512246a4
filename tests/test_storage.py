"""The storage interface: storage.at() picks the backend from the location text, every backend walks the same
tree into the same entries, and no module above the storage package asks "is this S3?" itself."""

from __future__ import annotations

import io
import tokenize
import zipfile
from pathlib import Path

import pytest

from tessq import storage
from tessq.storage import ArchiveStorage, LocalStorage, S3Storage, s3
from tests.s3server import DUMMY_ENV, s3_endpoint  # noqa: F401  (fixture)
from tests.s3tools import new_bucket, upload_tree

PACKAGE = Path(__file__).resolve().parents[1] / "tessq"
# Modules whose is-S3 branches the lead replaces after the merge (worker split, core's result retyped; report's
# upload summary and db's adoption of old output folders test the output text): empty this as they go.
ALLOWED: set[str] = set()  # every module outside tessq/storage asks the Storage
SCHEME_TEXTS = {"s3", "s3:", "s3:/", "s3://", "://"}
# '://' here is a database/queue URL (backends) or the S3 endpoint URL (upload.endpoint_id), not a location.
OTHER_URLS = {"backends.py", "upload.py"}


def small_tree(root: Path) -> Path:
    for rel, data in {
        "a.tif": b"A" * 10,
        "notes.txt": b"n",
        "sub/b.tiff": b"B" * 20,
        "sub/c.jpg": b"c",
        "sub/deeper/d.TIF": b"D" * 30,
        "jpgonly/x.jpg": b"x",
    }.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def entries(store: storage.Storage) -> list[tuple[str, list[tuple[str, int]], int, str | None]]:
    return [(f.rel, [(e.name, e.stat().st_size) for e in f.tiffs], f.other_images, f.skip_reason) for f in store.walk()]


def test_the_chooser_picks_the_backend_from_the_location(tmp_path: Path) -> None:
    folder = small_tree(tmp_path / "in")
    packed = tmp_path / "in.zip"
    with zipfile.ZipFile(packed, "w") as zf:
        zf.writestr("a.tif", b"A")
    assert isinstance(storage.at(folder), LocalStorage)
    assert isinstance(storage.at(str(folder)), LocalStorage)
    assert isinstance(storage.at(packed), ArchiveStorage)
    assert isinstance(storage.at(tmp_path / "missing.zip"), LocalStorage), "an archive is a file that exists"
    for url in ("s3://bucket/raw/", "s3://bucket/raw", Path("s3://bucket/raw")):  # Path folds '//' to '/'
        chosen = storage.at(url)
        assert isinstance(chosen, S3Storage) and chosen.text == "s3://bucket/raw"
    assert storage.at(storage.at(folder)) == storage.at(folder)
    assert storage.at("s3://bucket/raw").default_output().text == "s3://bucket/raw_tessq"
    assert storage.at(folder).default_output().resolved() == tmp_path / "in_tessq"
    assert storage.at(packed).default_output().resolved() == tmp_path / "in_tessq"
    assert storage.holds_state(folder) and not storage.holds_state("s3://bucket/raw")
    assert storage.resolve("s3:/bucket/raw/") == "s3://bucket/raw"
    assert storage.at("s3://bucket/raw").join("sub/b.tiff") == "s3://bucket/raw/sub/b.tiff"


def test_local_s3_and_archive_walk_the_same_tree_into_the_same_entries(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in DUMMY_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TESSQ_S3_ENDPOINT_URL", s3_endpoint)
    s3._CLIENT.reset()
    try:
        root = small_tree(tmp_path / "tree")
        bucket = new_bucket(s3_endpoint)
        upload_tree(s3_endpoint, root, bucket, "raw")
        packed = tmp_path / "tree.zip"
        with zipfile.ZipFile(packed, "w") as zf:
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(root).as_posix())
        local = entries(storage.at(root))
        assert local == [
            ("", [("a.tif", 10)], 0, None),
            ("jpgonly", [], 1, None),
            ("sub", [("b.tiff", 20)], 1, None),
            ("sub/deeper", [("d.TIF", 30)], 0, None),
        ]
        assert entries(storage.at(f"s3://{bucket}/raw")) == local
        assert entries(storage.at(packed)) == local
        remote = storage.at(f"s3://{bucket}/raw")
        assert remote.existing_source("sub/b.tiff") is not None
        assert remote.existing_source("sub/gone.tif") is None
    finally:
        s3._CLIENT.reset()


def asks_for_s3(path: Path, tok: tokenize.TokenInfo) -> bool:
    if tok.type == tokenize.NAME:
        return tok.string in ("is_remote", "_is_remote")
    if tok.type != tokenize.STRING:
        return False
    text = tok.string.strip("'\"rbfRBF")
    if text == "://" and path.name in OTHER_URLS:
        return False
    return text in SCHEME_TEXTS or tok.string.lstrip("rbRB").startswith(('f"s3://{', "f's3://{"))


def is_s3_questions(path: Path) -> list[str]:
    """Where a module tests a location for S3 itself: is_remote/_is_remote, or a scheme literal."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return [f"{path.name}:{tok.start[0]}: {tok.string[:40]}" for tok in tokens if asks_for_s3(path, tok)]


def test_no_module_outside_the_storage_package_asks_whether_a_location_is_s3() -> None:
    modules = [p for p in sorted(PACKAGE.rglob("*.py")) if "storage" not in p.relative_to(PACKAGE).parts]
    asked = [q for p in modules if p.name not in ALLOWED for q in is_s3_questions(p)]
    assert asked == [], "ask storage.at(location) instead:\n" + "\n".join(asked)


def test_the_detector_finds_the_questions_it_is_meant_to_find(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        'a = remote.is_remote(x)\nb = x.startswith("s3://")\nc = "://" in x\nd = f"s3://{b}/{k}"\n'
        'e = "help text about s3://BUCKET/PREFIX"\n'
    )
    assert [q.split(":")[1] for q in is_s3_questions(probe)] == ["1", "2", "3", "4"]
