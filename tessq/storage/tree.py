"""The tree rules every storage walks by: which names are TIFFs or other images, which folders are not entered,
what a folder of the walk looks like (FolderEntries), and how an image folder tessq wrote is recognised.

Pure rules and one small read (is_tessq_output); scan re-exports them, each backend's walk applies them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tessq import defaults

METADATA_NAME = defaults.METADATA_FILENAME
BATCH_METADATA_NAME = defaults.BATCH_METADATA_FILENAME  # uploaded just before metadata.json
TESSQ_METADATA_SCHEMA = defaults.METADATA_SCHEMA
TESSQ_METADATA_MAX = 64 * 1024 * 1024  # a metadata.json larger than this is no image folder's


@dataclass
class FolderEntries:
    rel: str  # posix path relative to the input root, '' for the root
    # os.DirEntry-shaped entries (name, path, stat(), is_symlink()): local, S3 or archive member
    tiffs: list[Any] = field(default_factory=list)
    other_images: int = 0
    # Set on a folder that was not entered (or not used as input): 'hidden', 'excluded', 'symlink', 'tessq_output'.
    skip_reason: str | None = None
    # TIFF names in this folder that were not read, with why ('symlink': a symbolic link not followed).
    skipped_files: list[tuple[str, str]] = field(default_factory=list)


def is_tiff_name(name: str) -> bool:
    return name.lower().endswith(defaults.TIFF_EXTENSIONS)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(defaults.IMAGE_EXTENSIONS)


def is_skipped_dir(name: str) -> bool:
    return name.startswith(".") or name in defaults.SKIPPED_DIR_NAMES


def is_tessq_metadata(meta: object) -> bool:
    """Whether a parsed metadata.json is one tessq wrote (its schema says "tessq.metadata")."""
    return isinstance(meta, dict) and meta.get("schema") == TESSQ_METADATA_SCHEMA


def is_tessq_output(folder: str | os.PathLike[str]) -> bool:
    """Whether local `folder` is an image folder tessq wrote (its metadata.json says schema "tessq.metadata")."""
    try:
        with open(Path(folder) / METADATA_NAME, "rb") as fh:
            meta = json.loads(fh.read(TESSQ_METADATA_MAX))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return is_tessq_metadata(meta)


# ---------------------------------------------------------------- archive names

READABLE_ARCHIVES = ".zip, .tar, .tar.gz/.tgz, .tar.bz2/.tbz2, .tar.xz/.txz"
# named like archives tessq does not read: refused with advice (unreadable_archive_advice), not "not a folder"
UNREADABLE_SUFFIXES = (".tar.zst", ".tzst", ".tar.zstd", ".7z", ".rar", ".tar.lz", ".tar.lz4", ".zst")


def unreadable_archive_advice(location: str | os.PathLike[str]) -> str | None:
    """For a file named like an archive tessq cannot read (.7z, .rar, .tar.zst...): what to do instead."""
    name = os.fspath(location).lower().rstrip("/")
    suffix = next((s for s in UNREADABLE_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        return None
    return (
        f"{suffix} archives are not read in place (tessq reads {READABLE_ARCHIVES}): extract it and pass the folder, "
        f"or repack it, e.g. as .tar (fastest: members are byte ranges) or .zip"
    )
