"""The Storage interface: what tessq needs of an input or output location, whatever holds it.

One subclass per backend (local.LocalStorage, s3.S3Storage, archive.ArchiveStorage); storage.at() picks one.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from tessq.storage.tree import FolderEntries


class Source(Protocol):
    """One readable image the way core and tiff see it: a local Path, a RemoteSource or an ArchiveMember."""

    @property
    def name(self) -> str: ...

    def stat(self) -> Any: ...


class OutputFolder(Protocol):
    """One image folder being written: the core writes into `local_dir`; `commit` makes it visible at the
    location (a no-op locally, where folder.AtomicFolder's rename already did; the upload on S3)."""

    @property
    def local_dir(self) -> Path: ...

    def commit(self, still_holds: Callable[[], bool] | None = None) -> dict[str, Any]: ...


class Storage(ABC):
    """One input or output location: a local folder, an s3://BUCKET/PREFIX, or an archive read as a tree."""

    kind: str  # 'local', 's3' or 'archive'
    holds_state = False  # whether OUT/.tessq (status table, queue, log) can live here
    probe_in_processes = False  # whether the scan may read headers in a process pool (local files)
    # sources are plain paths (nothing to open or release) and image folders commit by a rename: a worker may
    # then hand the commit to its committer thread and start the next image
    plain_files = False

    @property
    @abstractmethod
    def text(self) -> str:
        """The normalised location as the status table stores it and messages show it."""

    @abstractmethod
    def resolved(self) -> Path | str:
        """The canonical value of the location: an absolute Path for a local one, else the normalised URL."""

    @property
    def local_path(self) -> Path | None:
        """The local folder this location is, when it is one (None on S3 and for an archive's tree)."""
        return None

    @abstractmethod
    def join(self, relative: str) -> str:
        """The location of `relative` (a POSIX path) under this one, as text."""

    @abstractmethod
    def default_output(self) -> Storage:
        """Where the output of this input goes when no OUT is given: <IN>_tessq beside it."""

    @abstractmethod
    def check_input(self) -> None:
        """Refuse, with an actionable ConfigError, an input that does not exist or cannot be read."""

    def check_output(self) -> None:
        """Refuse an output that cannot be written (checked before anything is created); none by default."""
        return None

    @abstractmethod
    def prepare_output(self) -> None:
        """Make the output usable before the scan records the job (create the folder; check the bucket)."""

    @abstractmethod
    def walk(self, *, follow_symlinks: bool = False, exclude: Sequence[Path | str] = ()) -> Iterator[FolderEntries]:
        """Every folder of the tree with its TIFF entries, by the rules of storage.tree; `exclude` (the output,
        the workspace) is never entered."""

    @abstractmethod
    def source(self, relative: str) -> Source:
        """The image at `relative`, as core and tiff read it (nothing is fetched yet)."""

    @abstractmethod
    def existing_source(self, relative: str) -> Source | None:
        """source(relative) when it is there now, else None (verify compares with what is left)."""

    @contextlib.contextmanager
    def opened_source(self, relative: str, tmp_dir: str | os.PathLike[str] | None = None) -> Iterator[Source]:
        """A worker's view of one source for one image (spooled or read in place); cleaned up after."""
        yield self.source(relative)

    @abstractmethod
    def output_folder(
        self, out_rel: str, tmp_dir: str | os.PathLike[str] | None = None
    ) -> contextlib.AbstractContextManager[OutputFolder]:
        """Where one image folder is written, and how it is committed at this location."""

    def cleanup_stale(self, out_rel: str) -> None:
        """Remove what crashed writers of `out_rel` left (temp and moved-aside folders); none by default."""
        return None

    @abstractmethod
    def put_bytes(self, relative: str, data: bytes) -> None:
        """Write one small file (the report) at `relative`, replacing it atomically."""

    @abstractmethod
    def local_copy(self, out_rel: str) -> contextlib.AbstractContextManager[Path]:
        """The image folder `out_rel` as a local folder (downloaded to a temp dir when it is remote)."""

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Storage) and (self.kind, self.text) == (other.kind, other.text)

    def __hash__(self) -> int:
        return hash((self.kind, self.text))
