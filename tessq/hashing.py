"""The one content hash tessq records (defaults.HASH_ALGORITHM) for sources, slices and verification.

Base layer: bytes, open files and paths in, hex digests out; every module hashing content comes here.
"""

from __future__ import annotations

import hashlib
import os
from typing import IO, TYPE_CHECKING

from tessq import defaults

if TYPE_CHECKING:
    from _hashlib import HASH

HASH_BUFFER = 4 * 1024 * 1024  # read size when hashing files: large enough for the OS read-ahead


def new_hash() -> HASH:
    """An empty hash object of defaults.HASH_ALGORITHM (update() it, then hexdigest())."""
    return hashlib.new(defaults.HASH_ALGORITHM)


def bytes_digest(data: bytes | memoryview) -> str:
    return hashlib.new(defaults.HASH_ALGORITHM, data).hexdigest()


def stream_digest(fh: IO[bytes]) -> str:
    """Digest of everything left to read in an open binary file."""
    sha = new_hash()
    while chunk := fh.read(HASH_BUFFER):
        sha.update(chunk)
    return sha.hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as fh:
        return stream_digest(fh)
