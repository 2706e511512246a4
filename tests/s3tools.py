"""Helpers for tests against the moto S3 server: a fresh bucket, tree upload/download, and bit-exact checks.

Used by test_remote.py and test_multimachine.py with the `s3_endpoint` fixture from tests/s3server.py.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from tests.s3server import DUMMY_ENV


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        **{
            "aws_access_key_id": DUMMY_ENV["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": DUMMY_ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": DUMMY_ENV["AWS_REGION"],
        },
    )


def new_bucket(endpoint: str) -> str:
    name = f"tessq-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def upload_tree(endpoint: str, root: Path, bucket: str, prefix: str) -> int:
    """Every file under root to s3://bucket/prefix/<relative path>; returns the bytes sent."""
    client, total = s3_client(endpoint), 0
    for path in sorted(root.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root).as_posix()}")
            total += path.stat().st_size
    return total


def keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
    return sorted(o["Key"][len(prefix) + 1 :] for page in pages for o in page.get("Contents", []))


def download(endpoint: str, bucket: str, prefix: str, dest: Path) -> Path:
    client = s3_client(endpoint)
    for rel in keys(endpoint, bucket, prefix):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, f"{prefix}/{rel}", str(target))
    return dest


def assert_bit_exact(out: Path, sources: Path, expected: int) -> list[dict[str, Any]]:
    """Every image folder under `out` reassembles to its source under `sources` pixel for pixel."""
    from tessq.cut import verify

    folders = sorted(p.parent for p in out.rglob("metadata.json"))
    assert len(folders) == expected, [str(f) for f in folders]
    batch = []
    for folder in folders:
        meta = json.loads((folder / "metadata.json").read_text())
        outcome = verify.verify_image(folder, sources / meta["source"]["relative_path"])
        assert outcome["overall_identical"] and outcome["compared_with"] == "source", outcome
        batch.append(json.loads((folder / "batch_metadata.json").read_text()))
    return batch
