"""Where state lives and how a command finds it: the workspace, the database and queue URLs.

Resolution order is flag > environment (TESSQ_WORKSPACE, TESSQ_DB_URL, TESSQ_QUEUE_URL) > defaults.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tessq import backends, defaults
from tessq.options import SliceOptions


@dataclass(frozen=True)
class Workspace:
    """The directory whose `.tessq/` holds the embedded databases, and the URLs actually used."""

    root: Path
    db_url: str
    queue_url: str

    @property
    def state_dir(self) -> Path:
        return self.root / defaults.WORKSPACE_DIRNAME

    @property
    def is_embedded(self) -> bool:
        return self.db_url.startswith("sqlite:")


def resolve_workspace(workspace: str | os.PathLike[str] | None = None) -> Workspace:
    root = Path(workspace or os.environ.get("TESSQ_WORKSPACE") or Path.cwd()).expanduser().resolve()
    state = root / defaults.WORKSPACE_DIRNAME
    db_url = os.environ.get("TESSQ_DB_URL") or f"sqlite:///{state / defaults.STATUS_DB_FILENAME}"
    queue_url = os.environ.get("TESSQ_QUEUE_URL") or derive_queue_url(db_url, state)
    return Workspace(root=root, db_url=db_url, queue_url=queue_url)


def derive_queue_url(db_url: str, state_dir: Path) -> str:
    """SQLite status DB -> a sibling queue file; PostgreSQL -> huey's tables in the same database."""
    if backends.is_postgres(db_url):
        return db_url
    return f"sqlite:///{state_dir / defaults.QUEUE_DB_FILENAME}"


def options_fingerprint(options: SliceOptions) -> str:
    """A hash of everything that changes the output: a done image made with other settings is redone."""
    relevant = options.to_dict()
    relevant.pop("min_size", None)  # eligibility, not output
    relevant.pop("memory_budget", None)  # how, not what
    relevant.pop("self_check", None)  # a check, not the output
    blob = json.dumps(relevant, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
