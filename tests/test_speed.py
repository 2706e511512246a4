"""Issue 16: segment-deflate engines (zlib-ng Huffman/RLE, ISA-L), threads, parallel tile decoding, verify.

Every engine's PNG must decode to the same pixels with Pillow, libpng, libspng (imagecodecs) and OpenCV;
one-shot, streamed and threaded encodings of one preset must be byte-identical.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from tessq import defaults
from tessq.cut import core, encode, pngdecode, verify, verify_runner
from tessq.options import SliceOptions
from tessq.samples import photo_like

ENGINES = [("zlib-ng-huffman", 1), ("zlib-ng-rle", 1), ("isal", 0), ("isal", 1), ("isal", 3), ("auto", 1)]
KINDS = [
    ("uint8", 3, "rgb"),
    ("uint16", 3, "rgb"),
    ("uint8", 1, "minisblack"),
    ("uint16", 1, "minisblack"),
    ("uint8", 4, "rgb"),
    ("uint16", 2, "minisblack"),
]


def _image(dtype: str, samples: int, h: int = 203, w: int = 317, flat: bool = True) -> np.ndarray:
    img = photo_like(h, w, samples, dtype, seed=7)
    if flat:  # runs (nodata border) beside photo content: both branches of zlib-ng-huffman
        img[:, : w // 3] = 0
    return img


def _decoders(data: bytes, img: np.ndarray) -> dict[str, np.ndarray]:
    out = {"libpng": imagecodecs.png_decode(data), "pillow": np.asarray(Image.open(io.BytesIO(data)))}
    try:
        out["spng"] = imagecodecs.spng_decode(data)
    except imagecodecs.SpngError:
        # imagecodecs' libspng wrapper has no output format for 16-bit RGB/gray/gray+alpha or 8-bit
        # gray+alpha: it refuses libpng's own file of the same pixels too, so this is not our file
        with pytest.raises(imagecodecs.SpngError):
            imagecodecs.spng_decode(imagecodecs.png_encode(img))
    try:
        import cv2
    except ImportError:
        return out
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., [2, 1, 0, 3][: arr.shape[2]]]  # OpenCV is BGR(A)
    out["opencv"] = arr
    return out


@pytest.mark.parametrize("engine,level", ENGINES)
@pytest.mark.parametrize("dtype,samples,photometric", KINDS)
@pytest.mark.parametrize("method", ["up", "sub", "avg", "paeth"])
def test_every_engine_decodes_everywhere(engine, level, dtype, samples, photometric, method) -> None:
    img = _image(dtype, samples)
    kind = encode.slice_kind(dtype, samples, photometric, (0,) if samples in (2, 4) else ())
    data = encode.png_encode(img, kind, method, engine, level)
    for name, got in _decoders(data, img).items():
        if name == "pillow" and dtype == "uint16" and samples > 1:
            continue  # Pillow reads 16-bit colour (and 16-bit gray+alpha) as 8-bit
        if name == "opencv" and samples == 2:
            continue  # OpenCV expands gray+alpha to BGRA
        if name == "pillow":
            got = got.astype(img.dtype)
        assert got.shape == img.shape and np.array_equal(got, img), (name, engine, level, method)


def test_zlib_stream_is_valid_and_adler_combines() -> None:
    img = _image("uint8", 3, 700, 900)
    kind = encode.slice_kind("uint8", 3, "rgb")
    data = encode.png_encode(img, kind, "up", "zlib-ng-huffman", 1)
    idat = b""
    pos = 8
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        if data[pos + 4 : pos + 8] == b"IDAT":
            idat += data[pos + 8 : pos + 8 + n]
        pos += 12 + n
    raw = zlib.decompress(idat)  # CPython's zlib checks the Adler-32 trailer
    assert len(raw) == img.shape[0] * (img.shape[1] * 3 + 1)
    a, b = os.urandom(1000), os.urandom(777)
    assert encode.adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)


@pytest.mark.parametrize("engine", ["zlib-ng-huffman", "isal", "auto"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize("chunks", [[1, 5, 600], [333, 1, 333, 266], [64] * 15 + [13]])
def test_streamed_threaded_and_inline_are_byte_identical(engine, dtype, chunks, monkeypatch) -> None:
    h = sum(chunks)
    img = _image(dtype, 3, h, 700)
    kind = encode.slice_kind(dtype, 3, "rgb")
    one_shot = encode.png_encode(img, kind, "avg", engine, 1)
    buf = io.BytesIO()
    writer = encode.PngStreamWriter(buf, 700, h, kind, "avg", engine, 1)
    y = 0
    for n in chunks:
        writer.feed(img[y : y + n])
        y += n
    size, sha = writer.close()
    assert sha == hashlib.sha256(buf.getvalue()).hexdigest() and size == len(buf.getvalue())
    monkeypatch.setenv("TESSQ_THREADS", "1")
    encode._POOL.reset()
    try:
        inline = encode.png_encode(img, kind, "avg", engine, 1)
    finally:
        monkeypatch.delenv("TESSQ_THREADS")
        encode._POOL.reset()
    if encode.resolve_engine(engine, kind) == "isal":
        # ISA-L blocks compressed on the pool's threads are valid deflate whose bytes can differ from run to run
        # (measured: 2 distinct outputs in 60, every one decoding to the same pixels): compare the pixels
        for data in (buf.getvalue(), one_shot, inline):
            assert np.array_equal(imagecodecs.png_decode(data), img)
    else:
        assert buf.getvalue() == one_shot == inline


def test_stream_splits_idat_like_the_one_shot(monkeypatch) -> None:
    monkeypatch.setattr(encode, "IDAT_CHUNK", 4096)
    img = _image("uint8", 3, 300, 400, flat=False)
    kind = encode.slice_kind("uint8", 3, "rgb")
    one_shot = encode.png_encode(img, kind, "up", "auto", 1)
    buf = io.BytesIO()
    writer = encode.PngStreamWriter(buf, 400, 300, kind, "up", "auto", 1)
    for y in range(0, 300, 37):
        writer.feed(img[y : y + 37])
    writer.close()
    assert buf.getvalue() == one_shot and one_shot.count(b"IDAT") > 10
    assert np.array_equal(imagecodecs.png_decode(one_shot), img)


def test_auto_engine_picks_isal_for_16_bit_only() -> None:
    assert encode.resolve_engine("auto", encode.slice_kind("uint16", 3, "rgb")) == "isal"
    assert encode.resolve_engine("auto", encode.slice_kind("uint8", 3, "rgb")) == "zlib-ng-huffman"
    assert encode.resolve_engine("auto", encode.slice_kind("bool", 1, "minisblack")) == "zlib-ng-huffman"


def test_huffman_engine_keeps_runs_small() -> None:
    flat = np.zeros((512, 512, 3), np.uint8)
    kind = encode.slice_kind("uint8", 3, "rgb")
    assert len(encode.png_encode(flat, kind, "up", "zlib-ng-huffman", 1)) < 4000  # RLE, not 1 bit per byte


def _tiled_deflate(path: Path, h: int = 1100, w: int = 1500) -> np.ndarray:
    img = photo_like(h, w, 3, "uint8", seed=3)
    tifffile.imwrite(path, img, tile=(128, 128), compression="zlib", photometric="rgb")
    return img


def test_parallel_tile_decode_and_stream_path_are_bit_exact(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "big.tif"
    img = _tiled_deflate(src)
    monkeypatch.setattr(core, "BAND_LIMIT_BYTES", 200_000)  # force the streaming path
    monkeypatch.setattr(core, "STREAM_CHUNK_BYTES", 100_000)
    summary = core.tessellate_image(src, tmp_path / "out", SliceOptions(num_pieces=6, min_size=1, self_check="full"))
    for rec in summary["slice_records"]:
        got = imagecodecs.png_decode((tmp_path / "out" / rec["file"]).read_bytes())
        assert np.array_equal(got, img[rec["y0"] : rec["y1"], rec["x0"] : rec["x1"]])
    monkeypatch.setenv("TESSQ_THREADS", "1")
    encode._POOL.reset()
    try:
        again = core.tessellate_image(src, tmp_path / "out1", SliceOptions(num_pieces=6, min_size=1))
    finally:
        monkeypatch.delenv("TESSQ_THREADS")
        encode._POOL.reset()
    assert [r["sha256"] for r in again["slice_records"]] == [r["sha256"] for r in summary["slice_records"]]
    assert verify.verify_image(tmp_path / "out")["overall_identical"]


def test_verify_names_what_differs(tmp_path: Path) -> None:
    src = tmp_path / "a.tif"
    img = _tiled_deflate(src, 400, 600)
    out = tmp_path / "a"
    summary = core.tessellate_image(src, out, SliceOptions(num_pieces=6, min_size=1))
    files = [r["file"] for r in summary["slice_records"]]
    (out / files[0]).unlink()
    changed = img[
        summary["slice_records"][1]["y0"] : summary["slice_records"][1]["y1"],
        summary["slice_records"][1]["x0"] : summary["slice_records"][1]["x1"],
    ].copy()
    changed[3, 4] ^= 1
    kind = encode.slice_kind("uint8", 3, "rgb")
    (out / files[1]).write_bytes(encode.png_encode(changed, kind))
    (out / files[2]).write_bytes(
        encode.png_encode(
            img[
                summary["slice_records"][2]["y0"] : summary["slice_records"][2]["y1"],
                summary["slice_records"][2]["x0"] : summary["slice_records"][2]["x1"],
            ],
            kind,
            "paeth",
        )
    )
    (out / files[3]).write_bytes(b"\x89PNG garbage")
    result = verify.verify_image(out)
    kinds = {(p["file"], p["kind"]) for p in result["problems"]}
    assert (files[0], "missing") in kinds
    assert (files[1], "pixels") in kinds
    assert (files[2], "hash") in kinds and not any(k == (files[2], "pixels") for k in kinds)
    assert (files[3], "decode_error") in kinds
    assert not result["overall_identical"]


def test_verify_runner_parallel_matches_inline(tmp_path: Path) -> None:
    jobs = []
    for i in range(3):
        src = tmp_path / "in" / f"{i}.tif"
        src.parent.mkdir(exist_ok=True)
        _tiled_deflate(src, 300, 400)
        core.tessellate_image(src, tmp_path / "out" / str(i), SliceOptions(num_pieces=4, min_size=1))
        jobs.append(verify_runner.VerifyJob(i, str(tmp_path / "in"), str(tmp_path / "out"), f"{i}.tif", str(i)))
    meta = json.loads((tmp_path / "out" / "1" / "metadata.json").read_text())
    (tmp_path / "out" / "1" / meta["slices"][0]["file"]).unlink()
    recorded: dict[int, bool] = {}
    par = verify_runner.summarize(verify_runner.run(jobs, 2), recorded.__setitem__, None, 3)
    seq = verify_runner.summarize(verify_runner.run(jobs, 1), lambda *_: None, None, 3)
    assert par == seq and par["checked"] == 3 and par["different"] == ["1.tif"]
    assert recorded == {0: True, 1: False, 2: True}
    assert par["details"][0]["problems"][0]["kind"] == "missing"


@pytest.mark.parametrize("dtype,samples,photometric", KINDS)
@pytest.mark.parametrize("method", ["none", "sub", "up", "avg", "paeth"])
def test_verify_fast_decoder_matches_libpng(dtype, samples, photometric, method) -> None:
    img = _image(dtype, samples, 61, 83)
    kind = encode.slice_kind(dtype, samples, photometric, (0,) if samples in (2, 4) else ())
    data = encode.png_encode(img, kind, method, "auto", 1)
    fast = pngdecode.fast_png_decode(data)
    if method in ("avg", "paeth"):
        assert fast is None  # left to libpng
    else:
        assert fast is not None and fast.dtype == img.dtype and np.array_equal(fast, img)
    libpng_made = imagecodecs.png_encode(img)  # adaptive filters: mixed row types -> libpng fallback
    got = pngdecode.fast_png_decode(libpng_made)
    assert got is None or np.array_equal(got, img)


def test_verify_fast_decoder_rejects_damage() -> None:
    img = _image("uint8", 3, 40, 50)
    data = bytearray(encode.png_encode(img, encode.slice_kind("uint8", 3, "rgb"), "up", "auto", 1))
    bad = bytearray(data)
    bad[60] ^= 0x10  # inside IDAT: its CRC no longer matches
    with pytest.raises(ValueError, match="CRC"):
        pngdecode.fast_png_decode(bytes(bad))
    with pytest.raises(ValueError):
        pngdecode.fast_png_decode(bytes(data[:-30]))


@pytest.mark.parametrize(
    ("waiting", "running_here", "workers_here", "busy"),
    [
        (10, 1, 2, True),  # a batch on 2 workers: the other worker takes the next image, both cores busy
        (10, 1, 1, False),  # one worker on 2 cores: the second core would idle, the image takes it
        (0, 2, 2, True),  # the last two images, one per core
        (0, 1, 2, False),  # one big image (or the batch's last): the pool takes the idle core
        (0, 3, 6, True),  # more images running than cores
    ],
)
def test_an_image_takes_idle_cores_only_when_no_other_image_has_them(waiting, running_here, workers_here, busy) -> None:
    assert encode.cores_busy(waiting, running_here, workers_here, cores=2) is busy


def test_a_process_whose_cores_are_taken_encodes_inline_and_gets_its_pool_back(monkeypatch) -> None:
    monkeypatch.delenv("TESSQ_THREADS", raising=False)
    monkeypatch.setattr(defaults, "usable_cores", lambda: 2)
    encode._POOL.reset()
    try:
        encode.cores_taken(True)
        assert encode.thread_pool() is None
        img = _image("uint8", 3, 300, 400)
        kind = encode.slice_kind("uint8", 3, "rgb")
        inline = encode.png_encode(img, kind, "up", "zlib-ng-huffman", 1)
        encode.cores_taken(False)
        assert encode.thread_pool() is not None
        assert encode.png_encode(img, kind, "up", "zlib-ng-huffman", 1) == inline
        monkeypatch.setenv("TESSQ_THREADS", "2")  # an explicit thread count keeps its pool either way
        encode.cores_taken(True)
        assert encode.thread_pool() is not None
    finally:
        encode.cores_taken(False)
        encode._POOL.reset()
