"""Where state lives and how a command finds it: the workspace, the database and queue URLs.

The rule: a job's state lives with its output, in OUT/.tessq/ (tessq.db: the status table, queue.db:
huey's queue). A command finds it, in this order, from
  1. an explicit workspace: `--workspace/-w DIR` or $TESSQ_WORKSPACE (DIR/.tessq/; DIR may be OUT);
  2. the output folder it is given (`tessq run IN OUT`, `scan --out OUT`, `tessq status OUT`, ...):
     OUT/.tessq/, unless an old-layout `.tessq/` in the current folder already holds OUT's job (it is
     then used as before, with a message saying how to move it); an s3:// OUT keeps its state in a
     local folder named after the URL under the user cache dir ($XDG_CACHE_HOME/tessq/workspaces/);
  3. otherwise the nearest `.tessq/` in the current folder or one of its parents, as git finds `.git`
     (so anywhere inside OUT finds OUT/.tessq);
  4. else, with a TESSQ_DB_URL (PostgreSQL), that shared database (jobs are told apart by output folder);
     with the embedded SQLite default it is an error saying what to pass.

Flag > environment (TESSQ_WORKSPACE, TESSQ_DB_URL, TESSQ_QUEUE_URL) > defaults.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from tessq import defaults, storage
from tessq.errors import ConfigError
from tessq.jobs import backends
from tessq.options import SliceOptions

log = logging.getLogger("tessq")

NO_JOB_HERE = (
    "no tessq job found here (no .tessq/ in {cwd} or its parents): pass the output folder, "
    "e.g. `tessq {command} OUT` or `tessq -w OUT {command}`, or run the command from inside OUT"
)


@dataclass(frozen=True)
class Workspace:
    """The directory whose `.tessq/` holds the embedded databases, and the URLs actually used.

    `how` says how it was found (explicit, output, legacy, search, shared-db); `legacy` marks an
    old-layout workspace (a `.tessq/` in the current folder holding OUT's job)."""

    root: Path
    db_url: str
    queue_url: str
    how: str = "explicit"

    @property
    def state_dir(self) -> Path:
        return self.root / defaults.WORKSPACE_DIRNAME

    @property
    def is_embedded(self) -> bool:
        return self.db_url.startswith("sqlite:")

    @property
    def exists(self) -> bool:
        """Whether there is state to read: the embedded status DB file, or a shared database."""
        return not self.is_embedded or self.db_file().is_file()

    def db_file(self) -> Path:
        return Path(backends.sqlite_path(self.db_url)) if self.is_embedded else self.state_dir

    @property
    def legacy(self) -> bool:
        return self.how == "legacy"


def _canonical_out(output_dir: str | os.PathLike[str]) -> str:
    """How the status table stores an output location (a local one also with '~' expanded)."""
    if not storage.holds_state(output_dir):
        return storage.text(output_dir)
    return str(Path(output_dir).expanduser().resolve())


def _root_of(path: str | os.PathLike[str]) -> Path:
    """A folder given as a workspace: DIR, or DIR/.tessq itself (then its parent)."""
    root = Path(path).expanduser().resolve()
    return root.parent if root.name == defaults.WORKSPACE_DIRNAME else root


def remote_workspace_root(url: str) -> Path:
    """The local workspace of an s3:// output: a folder named after the URL in the user cache dir."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tessq" / "workspaces"
    norm = _canonical_out(url)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", storage.s3.parse(norm).path)[:80]
    return base / f"s3_{slug}_{hashlib.sha256(norm.encode()).hexdigest()[:10]}"


def find_state_upwards(start: Path) -> Path | None:
    """The nearest folder at or above `start` holding `.tessq/tessq.db` (git's rule for `.git`)."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / defaults.WORKSPACE_DIRNAME / defaults.STATUS_DB_FILENAME).is_file():
            return folder
    return None


def legacy_jobs(root: Path) -> list[str] | None:
    """Output folders of the jobs in `root/.tessq/tessq.db` (read-only), None if there is no such DB."""
    path = root / defaults.WORKSPACE_DIRNAME / defaults.STATUS_DB_FILENAME
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return [row[0] for row in conn.execute('SELECT "output_dir" FROM "job"')]
        finally:
            conn.close()
    except sqlite3.Error:
        return None


def _urls(root: Path) -> tuple[str, str]:
    state = root / defaults.WORKSPACE_DIRNAME
    db_url = os.environ.get("TESSQ_DB_URL") or f"sqlite:///{state / defaults.STATUS_DB_FILENAME}"
    queue_url = os.environ.get("TESSQ_QUEUE_URL") or derive_queue_url(db_url, state)
    return db_url, queue_url


def resolve_workspace(
    workspace: str | os.PathLike[str] | None = None,
    *,
    output_dir: str | os.PathLike[str] | None = None,
    search: bool = True,
    command: str = "status",
) -> Workspace:
    """The workspace of a command, by the rule in this module's docstring.

    `output_dir`: the job's output folder when the command knows it. `search`: look for `.tessq/` in
    the current folder and its parents when neither a workspace nor an output is given (else the
    current folder is the workspace, the old behaviour, for callers that create one on purpose)."""
    explicit = workspace or os.environ.get("TESSQ_WORKSPACE")
    shared = bool(os.environ.get("TESSQ_DB_URL"))  # the status table is not in any .tessq/ (PostgreSQL, usually)
    if explicit:
        root, how = _root_of(explicit), "explicit"
    elif output_dir is not None:
        out = _canonical_out(output_dir)
        cwd = Path.cwd().resolve()
        if not storage.holds_state(out):
            root, how = remote_workspace_root(out), "output"
        else:
            root, how = Path(out), "output"
        if not shared and not (root / defaults.WORKSPACE_DIRNAME).exists() and out in (legacy_jobs(cwd) or []):
            root, how = cwd, "legacy"
    elif not search:
        root, how = Path.cwd().resolve(), "cwd"
    else:
        found = find_state_upwards(Path.cwd())
        if found is not None:
            root, how = found, "search"
        elif shared:
            root, how = Path.cwd().resolve(), "shared-db"
        else:
            raise ConfigError(NO_JOB_HERE.format(cwd=Path.cwd(), command=command))
    db_url, queue_url = _urls(root)
    return Workspace(root=root, db_url=db_url, queue_url=queue_url, how=how)


def legacy_message(ws: Workspace, output_dir: str | os.PathLike[str]) -> str:
    """What to tell the user of an old-layout workspace (kept working, not moved behind their back)."""
    jobs = legacy_jobs(ws.root) or []
    out = _canonical_out(output_dir)
    if not storage.holds_state(out):
        move = f"mv {ws.state_dir} {remote_workspace_root(out) / defaults.WORKSPACE_DIRNAME}"
    else:
        move = f"mv {ws.state_dir} {Path(out) / defaults.WORKSPACE_DIRNAME}"
    if len(jobs) <= 1:
        how = f"to keep it with the output (and resume from any folder), stop its workers and run: {move}"
    else:
        how = (
            f"it holds {len(jobs)} jobs; new jobs keep their state in OUT/.tessq, this one stays here "
            f"(run its commands from {ws.root} or with -w {ws.root})"
        )
    return f"using the old-layout workspace {ws.state_dir}, which holds the job writing to {out}; {how}"


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


def options_changes(old: dict[str, object], new: dict[str, object]) -> list[str]:
    """`name: old -> new` for each output-changing option that differs (what a refusal names)."""
    skip = {"min_size", "memory_budget"}
    keys = sorted((set(old) | set(new)) - skip)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
