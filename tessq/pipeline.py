"""What each command does, as plain functions shared by the CLI and the Python API.

scan -> enqueue, workers (drain) -> report, retry, verify: each opens the workspace, calls the
modules that own the work, and returns plain data for the caller to print.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tessq import db, defaults, logs, remote, report, scan
from tessq import queue as tq
from tessq.errors import ConfigError, TessqError
from tessq.options import SliceOptions
from tessq.settings import Workspace, options_fingerprint, resolve_workspace

log = logging.getLogger("tessq")


def open_workspace(workspace: str | Path | None = None, *, create: bool = True) -> Workspace:
    """Resolve the workspace and point the database and the queue at it (schema created if needed)."""
    ws = resolve_workspace(workspace)
    if ws.is_embedded and not create and not ws.state_dir.exists():
        raise ConfigError(f"no tessq workspace in {ws.root} (run `tessq scan IN` there first, or pass --workspace)")
    tq.configure(ws)
    db.create_schema()
    return ws


def start_logging(level: str, output_dir: Path | str | None = None, console: bool = True) -> None:
    if output_dir is not None and remote.is_remote(output_dir):  # S3 holds no log: it stays in the workspace
        output_dir = (tq.workspace() or resolve_workspace()).state_dir
    log_file = (Path(output_dir) / defaults.LOG_FILENAME) if output_dir else None
    logs.setup(level, log_file, console=console)


def default_output_dir(input_dir: Path | str) -> Path | str:
    if remote.is_remote(input_dir):
        return remote.default_output(input_dir)
    input_dir = Path(input_dir)
    return input_dir.resolve().parent / f"{input_dir.resolve().name}_tessq"


def scan_and_enqueue(input_dir: Path | str, output_dir: Path | str | None, options: SliceOptions, *,
                     follow_symlinks: bool = False, workspace: Workspace) -> scan.ScanSummary:
    """Either side may be s3://BUCKET/PREFIX (its bucket is checked here; nothing is created on S3)."""
    if remote.is_remote(input_dir):
        remote.check_input(str(input_dir))
    elif not Path(input_dir).is_dir():
        raise ConfigError(f"input folder {input_dir} does not exist or is not a folder")
    out = remote.resolve(output_dir or default_output_dir(input_dir))
    if out == remote.resolve(input_dir):
        raise ConfigError("the output folder must differ from the input folder")
    if isinstance(out, Path):
        out.mkdir(parents=True, exist_ok=True)
    else:
        remote.check_bucket(out)
    summary = scan.scan_tree(input_dir, out, options, options_fingerprint(options),
                             follow_symlinks=follow_symlinks, exclude=(workspace.state_dir,))
    with db.session():
        sizes = db.queued_ids_with_size()
    tq.enqueue([i for i in summary.enqueue_ids if i in sizes], sizes)
    log.info("scan of %s: %d found, %d queued, %d requeued, %d already done", summary.input_dir, summary.found,
             summary.queued, summary.requeued, summary.already_done)
    return summary


def latest_output_dir() -> Path | None:
    dirs = report.output_dirs()
    return dirs[-1] if dirs else None


def finish_report() -> dict[str, Any]:
    """Compute the report and write it into every job's output folder."""
    rep = report.build_report()
    for out in report.output_dirs():
        if remote.is_remote(out):
            try:
                remote.put_bytes(report.report_bytes(rep), remote.join(out, defaults.REPORT_FILENAME))
            except TessqError as exc:
                log.warning("could not write the report to %s: %s", remote.normalize(out), exc)
        elif out.is_dir():
            report.write_report(rep, out)
    return rep


def retry_failed(error_types: list[str] | None = None) -> int:
    with db.session():
        ids = db.requeue_failed(error_types)
        sizes = db.queued_ids_with_size()
    tq.enqueue(ids, sizes)
    return len(ids)


def verify_done(
    progress: Callable[[int, int, str], None] | None = None, sample: int | None = None, workers: int | None = None
) -> dict[str, Any]:
    """Check every done image against its source (or its recorded hashes) and record the verdict; `workers`
    processes (default: one per core), see verify_runner. 'details' says per different image what differs."""
    from tessq import verify_runner

    with db.session():
        rows = db.done_images()
    if sample is not None:
        rows = rows[:sample]
    jobs = [verify_runner.VerifyJob(r.id, r.job.input_dir, r.job.output_dir, r.rel_path, r.out_rel) for r in rows]
    db.database.close()  # no connection across the pool's fork; reopened by the next session

    def record(image_id: int, identical: bool) -> None:
        with db.session():
            db.record_verification(image_id, identical)

    return verify_runner.summarize(verify_runner.run(jobs, workers), record, progress, len(jobs))


def forget_job(input_dir: Path | str) -> None:
    """--no-resume: drop what the table knows of this input, so every image is cut again."""
    with db.session():
        db.forget_job(str(remote.resolve(input_dir)))


def _done_dirs() -> tuple[Path, list[str]]:
    with db.session():
        rows = db.done_images()
    out = latest_output_dir()
    if out is None:
        raise ConfigError("nothing to ship: no job in this workspace (run `tessq scan` / `tessq run` first)")
    return out, [r.out_rel for r in rows if Path(r.job.output_dir) == out]


def export_zip(dest: Path | None, folder: str | None,
               progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    from tessq import export

    out, image_dirs = _done_dirs()
    return export.export_zip(out, image_dirs, dest, folder=folder, progress=progress)


def upload(url: str, *, endpoint_url: str | None = None, profile: str | None = None, concurrency: int = 8,
           progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    from tessq import upload as up

    out, image_dirs = _done_dirs()
    files = up.files_to_ship(out, image_dirs)
    return up.upload_outputs(files, url, ledger=db.UploadLedger(), endpoint_url=endpoint_url, profile=profile,
                             concurrency=concurrency, progress=progress)
