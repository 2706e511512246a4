"""What each command does, as plain functions shared by the CLI and the Python API.

scan -> enqueue, workers (drain) -> report, retry, verify: each opens the workspace, calls the
modules that own the work, and returns plain data for the caller to print. `run(RunRequest)` is the
whole run (scan, workers, report, zip) written once for `tessq run`, `tessq demo` and the Python API.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tessq import defaults, logs, storage
from tessq.errors import ConfigError, TessqError
from tessq.jobs import db, report, scan
from tessq.jobs import queue as tq
from tessq.jobs.settings import Workspace, legacy_message, options_changes, options_fingerprint, resolve_workspace
from tessq.options import SliceOptions

log = logging.getLogger("tessq")


def open_workspace(
    workspace: str | Path | None = None,
    *,
    create: bool = True,
    output_dir: Path | str | None = None,
    search: bool | None = None,
    command: str = "status",
) -> Workspace:
    """Resolve the workspace (settings.resolve_workspace: explicit, else OUT/.tessq, else a `.tessq/` found
    from the current folder up) and point the database and the queue at it (schema created if needed).

    `create=False` (the commands that read a job) refuses a workspace that holds no state, creating nothing;
    `search` defaults to `not create` (a reader looks upwards; a writer without OUT uses the current folder)."""
    ws = resolve_workspace(
        workspace, output_dir=output_dir, search=(not create) if search is None else search, command=command
    )
    if not create and not ws.exists:
        raise ConfigError(_missing_state(ws, output_dir))
    if ws.legacy and output_dir is not None:
        log.warning("%s", legacy_message(ws, output_dir))
    tq.configure(ws)
    db.create_schema()
    return ws


@contextlib.contextmanager
def bound(ws: Workspace) -> Iterator[Workspace]:
    """`ws`'s status table and queue for the `with` block (its schema created if it went missing), the previous
    binding given back after: what a caller holding its own workspace (a BatchTesselator) wraps each call in."""
    with tq.bound(ws):
        db.create_schema()
        yield ws


def _missing_state(ws: Workspace, output_dir: Path | str | None) -> str:
    if ws.is_embedded and ws.state_dir.is_dir() and not ws.db_file().exists():
        out = output_dir if output_dir is not None else ws.root
        return (
            f"{ws.db_file()} is missing (deleted?): the job's status table is gone. Restore it, or run "
            f"`tessq run IN {out}` again to rebuild it (finished image folders in {out} that match their source "
            f"and the options are kept as done, the others are cut again)"
        )
    if ws.how == "output" and output_dir is not None:
        return (
            f"no tessq job in {output_dir}: {ws.state_dir} does not exist (pass the output folder of a job, "
            f"or start one with `tessq run IN {output_dir}` or `tessq scan IN --out {output_dir}`)"
        )
    return (
        f"no tessq workspace in {ws.root} ({ws.state_dir} holds no status table): pass the output folder of "
        f"a job (`-w OUT`), or start one with `tessq scan IN --out OUT` / `tessq run IN OUT`"
    )


def _where(ws: Workspace | None) -> str:
    if ws is None or ws.is_embedded:
        return str(ws.state_dir) if ws else "this workspace"
    from urllib.parse import urlparse

    url = urlparse(ws.db_url)
    return f"the database {url.hostname or ''}{url.path}"


@dataclass
class JobChoice:
    """The job a command speaks of, and a note when other jobs share its database."""

    job: db.Job
    note: str | None = None


def select_job(
    ws: Workspace | None = None, *, out: Path | str | None = None, job_id: int | None = None, require: bool = True
) -> JobChoice | None:
    """One job of the workspace: by --job ID, else by output folder, else the only one, else the one whose
    output holds the workspace or the current folder, else the latest scanned (said so in `note`)."""
    ws = ws or tq.workspace()
    with db.session():
        jobs = list(db.Job.select().order_by(db.Job.id))
    if not jobs:
        if not require:
            return None
        raise ConfigError(f"no job in {_where(ws)} yet: start one with `tessq scan IN --out OUT` or `tessq run IN OUT`")
    listing = "; ".join(f"--job {j.id}: {j.input_dir} -> {j.output_dir}" for j in jobs)
    if job_id is not None:
        chosen = [j for j in jobs if j.id == job_id]
        if not chosen:
            raise ConfigError(f"no job {job_id} in {_where(ws)}; the jobs are: {listing}")
        job = chosen[0]
    elif out is not None:
        wanted = storage.text(out)
        chosen = [j for j in jobs if j.output_dir == wanted]
        if not chosen:
            raise ConfigError(f"no job writes to {wanted} in {_where(ws)}; the jobs are: {listing}")
        job = chosen[0]
    elif len(jobs) == 1:
        job = jobs[0]
    else:
        job = _job_here(jobs, ws) or max(jobs, key=lambda j: (j.updated_at, j.id))
    note = None
    if len(jobs) > 1:
        note = (
            f"{len(jobs)} jobs share {_where(ws)}; this is job {job.id} ({job.input_dir} -> {job.output_dir}). "
            f"Pick another with --job ID or its output folder: {listing}"
        )
    return JobChoice(job, note)


def _job_here(jobs: list[db.Job], ws: Workspace | None) -> db.Job | None:
    """The job whose output folder is the workspace or holds the current folder (deepest match)."""
    places = [Path.cwd().resolve()] + ([ws.root] if ws else [])
    best: tuple[int, db.Job] | None = None
    for job in jobs:
        if storage.at(job.output_dir).local_path is None:
            continue
        out = Path(job.output_dir)
        for place in places:
            if place == out or out in place.parents:
                depth = len(out.parts)
                if best is None or depth > best[0]:
                    best = (depth, job)
    return best[1] if best else None


def _job(job: db.Job | None) -> db.Job:
    if job is not None:
        return job
    choice = select_job()
    assert choice is not None
    return choice.job


def start_logging(level: str, output_dir: Path | str | None = None, console: bool = True) -> None:
    if output_dir is not None and not storage.holds_state(output_dir):  # S3 holds no log: it stays in the workspace
        output_dir = (tq.workspace() or resolve_workspace(search=False)).state_dir
    log_file = (Path(output_dir) / defaults.LOG_FILENAME) if output_dir else None
    logs.setup(level, log_file, console=console)


def default_output_dir(input_dir: Path | str) -> Path | str:
    """<IN>_tessq beside IN (for an archive data.zip: data_tessq beside it)."""
    return storage.at(input_dir).default_output().resolved()


def check_locations(input_dir: Path | str, output_dir: Path | str | None) -> Path | str:
    """Refuse an input or output that cannot work before anything is created; returns the resolved OUT.

    Either side may be s3://BUCKET/PREFIX (its bucket is checked here; nothing is created on S3)."""
    source = storage.at(input_dir)  # a .zip/.tar/.tar.gz file (local or s3://) is refused here if unreadable
    source.check_input()
    target = storage.at(output_dir) if output_dir else source.default_output()
    out = target.resolved()
    if out == source.resolved():
        raise ConfigError(f"the output folder must differ from the input folder ({out}): pass another OUT")
    target.check_output()
    return out


def check_job(
    input_dir: Path | str, output_dir: Path | str, options: SliceOptions, *, force_options: bool = False
) -> None:
    """Refuse a scan that would silently throw finished work away (the workspace must be open).

    - OUT already holds another input's job; - IN is already cut into another OUT in this database;
    - the cut options differ from the job's and some images are done: they would be cut again, so it
      takes `force_options` (`--force-options`, `BatchJob(force_options=True)`)."""
    inp, out = storage.text(input_dir), storage.text(output_dir)
    fingerprint = options_fingerprint(options)
    with db.session():
        by_out = db.Job.get_or_none(db.Job.output_dir == out)
        by_in = db.Job.get_or_none(db.Job.input_dir == inp)
        if by_out is not None and by_out.input_dir != inp:
            raise ConfigError(
                f"{out} already holds the output of another input, {by_out.input_dir} (job {by_out.id}); "
                f"use another output folder for {inp}"
            )
        if by_in is not None and by_in.output_dir != out:
            raise ConfigError(
                f"{inp} is already cut into {by_in.output_dir} (job {by_in.id}) in "
                f"{_where(tq.workspace())}; resume that job, or pass -w/--workspace to keep this "
                f"new output's state apart"
            )
        if by_in is None:
            return
        redo = (
            db.Image.select()
            .where((db.Image.job == by_in.id) & (db.Image.status == db.DONE) & (db.Image.options_hash != fingerprint))
            .count()
        )
    if redo and not force_options:
        import json

        changes = options_changes(json.loads(by_in.options), options.to_dict()) or ["settings fingerprint"]
        raise ConfigError(
            f"the cut options differ from the ones {out} was made with ({', '.join(changes)}): this would cut "
            f"{redo} finished image(s) again and replace their output. To do that, repeat the command with "
            f"--force-options (Python: BatchJob(force_options=True)); to keep them, use the job's options or "
            f"another output folder"
        )
    if redo:
        log.warning("options changed (--force-options): %d finished image(s) of %s will be cut again", redo, out)


def scan_and_enqueue(
    input_dir: Path | str,
    output_dir: Path | str | None,
    options: SliceOptions,
    *,
    follow_symlinks: bool = False,
    workspace: Workspace,
    force_options: bool = False,
    check_output: str = "stat",
) -> scan.ScanSummary:
    """Either side may be s3://BUCKET/PREFIX (its bucket is checked here; nothing is created on S3).

    check_output: how done images' output folders are checked before they count as done ("stat", "hash",
    "none"; see scan.output_problem); damaged ones are queued again."""
    if check_output not in scan.CHECK_OUTPUT_MODES:
        raise ConfigError(f"--check-output must be one of {', '.join(scan.CHECK_OUTPUT_MODES)}, not {check_output!r}")
    out = check_locations(input_dir, output_dir)
    check_job(input_dir, out, options, force_options=force_options)
    storage.at(out).prepare_output()
    summary = scan.scan_tree(
        input_dir,
        out,
        options,
        options_fingerprint(options),
        follow_symlinks=follow_symlinks,
        exclude=(workspace.state_dir,),
        check_output=check_output,
    )
    with db.session():
        sizes = db.queued_ids_with_size()
    tq.enqueue([i for i in summary.enqueue_ids if i in sizes], sizes)
    log.info(
        "scan of %s: %d found, %d queued, %d requeued, %d already done, %d queued again (output missing, "
        "damaged or verified different), %d skipped",
        summary.input_dir,
        summary.found,
        summary.queued,
        summary.requeued,
        summary.already_done,
        summary.requeued_damaged,
        len(summary.skipped_entries),
    )
    return summary


def latest_output_dir() -> Path | None:
    """The output folder of the job `select_job` picks (None when the workspace holds no job)."""
    choice = select_job(require=False)
    return Path(choice.job.output_dir) if choice else None


def finish_report(job: db.Job | None = None) -> dict[str, Any]:
    """Compute one job's report and write it into that job's output folder (OUT/batch_report.json)."""
    job = _job(job)
    with db.session():
        current = db.Job.get_or_none(db.Job.id == job.id)
    if current is None or (current.input_dir, current.output_dir) != (job.input_dir, job.output_dir):
        # an empty or another job's database (the file was deleted and created anew, or replaced): a report
        # from it would overwrite the real one with zeros or with someone else's numbers
        raise ConfigError(
            f"not writing the report of {job.output_dir}: {_where(tq.workspace())} holds no job "
            f"{job.input_dir} -> {job.output_dir} any more (its status table was deleted or replaced); "
            f"the existing {defaults.REPORT_FILENAME} is kept. Restore the status table, or run "
            f"`tessq run {job.input_dir} {job.output_dir}` again"
        )
    rep = report.build_report(job.id)
    target = storage.at(job.output_dir)
    if target.local_path is not None:  # OUT removed meanwhile: nothing to write the report into
        if target.local_path.is_dir():
            report.write_report(rep, Path(job.output_dir))
        return rep
    try:
        target.put_bytes(defaults.REPORT_FILENAME, report.report_bytes(rep))
    except TessqError as exc:
        log.warning("could not write the report to %s: %s", target.text, exc)
    return rep


def retry_failed(error_types: list[str] | None = None, job: db.Job | None = None, different: bool | None = None) -> int:
    """Re-queue one job's failed images (only `error_types` if given) and, unless `different` is False (by
    default when no error type is given), its done images `tessq verify` found different."""
    job = _job(job)
    if different is None:
        different = not error_types
    with db.session():
        ids = db.requeue_failed(error_types, job.id)
        if different:
            ids += db.requeue_done(db.different_ids(job.id))
        sizes = db.queued_ids_with_size()
    tq.enqueue(ids, sizes)
    return len(ids)


def verify_done(
    progress: Callable[[int, int, str], None] | None = None,
    sample: int | None = None,
    job: db.Job | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Check every done image of one job against its source (or its recorded hashes) and record the verdict;
    `workers` processes (default: one per core), see verify_runner. 'details' says per different image what
    differs."""
    from tessq.cut import verify_runner

    job = _job(job)
    with db.session():
        rows = db.done_images(job.id)
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
        db.forget_job(storage.text(input_dir))


def _done_dirs(job: db.Job | None = None) -> tuple[Path, list[str]]:
    """One job's output folder and its done image folders (the state dir .tessq/ is never among them)."""
    choice = select_job(require=False) if job is None else JobChoice(job)
    if choice is None:
        raise ConfigError("nothing to ship: no job in this workspace (run `tessq scan` / `tessq run` first)")
    with db.session():
        rows = db.done_images(choice.job.id)
    return Path(choice.job.output_dir), [r.out_rel for r in rows]


def redo_hint(out: Path | str) -> str:
    """The command that really redoes the done images missing from `out`: the same scan or run again (the scan
    checks every done image's folder and queues the missing or damaged ones)."""
    with db.session():
        job = db.Job.select().where(db.Job.output_dir == str(out)).order_by(db.Job.id.desc()).first()
    src = job.input_dir if job is not None else "IN"
    return (
        f"run `tessq run {src} {out}` (or `tessq scan {src} --out {out}` then `tessq workers --drain`) "
        "again to redo them"
    )


def export_zip(
    dest: Path | None, folder: str | None, progress: Callable[[int, int], None] | None = None, job: db.Job | None = None
) -> dict[str, Any]:
    from tessq.ship import export

    out, image_dirs = _done_dirs(job)
    try:
        return export.export_zip(out, image_dirs, dest, folder=folder, progress=progress)
    except export.MissingImagesError as exc:
        raise export.MissingImagesError(exc.missing, redo_hint(out)) from None


def upload(
    url: str,
    *,
    endpoint_url: str | None = None,
    profile: str | None = None,
    concurrency: int = 8,
    progress: Callable[[int, int], None] | None = None,
    job: db.Job | None = None,
) -> dict[str, Any]:
    from tessq.ship import export
    from tessq.ship import upload as up

    out, image_dirs = _done_dirs(job)
    try:
        files = up.files_to_ship(out, image_dirs)
    except export.MissingImagesError as exc:
        raise export.MissingImagesError(exc.missing, redo_hint(out)) from None
    return up.upload_outputs(
        files,
        url,
        ledger=db.UploadLedger(),
        endpoint_url=endpoint_url,
        profile=profile,
        concurrency=concurrency,
        progress=progress,
    )


# ------------------------------------------------------------------ the run flow (tessq run, tessq demo, the API)

DRAINED = "drained"  # how the workers stopped: nothing left to do ('signal': Ctrl-C/SIGTERM, resume later)


@dataclass(frozen=True)
class RunRequest:
    """What one run is asked to do: where, how to cut, and the run's policy (resume, workers, zip)."""

    input_dir: Path | str
    output_dir: Path | str
    options: SliceOptions
    resume: bool = True  # False: forget the input's records and cut every image again (options not checked)
    follow_symlinks: bool = False
    check_output: str = "stat"
    force_options: bool = False
    n_workers: int = defaults.WORKERS
    zip: bool = False  # also write OUT/<OUT name>_results.zip once the queue is drained
    workspace: str | Path | None = None  # explicit; else found from OUT (settings.resolve_workspace)
    log_level: str = "INFO"
    command: str = "run"  # named in messages about a missing workspace

    @property
    def forced(self) -> bool:
        """Whether option changes are accepted: asked for, or implied by redoing everything."""
        return self.force_options or not self.resume


def _drain_here(n_workers: int, job: db.Job) -> str:
    """The workers in this process's children until the queue is drained; a second Ctrl-C/SIGTERM stops them
    at once (running images were handed back to the queue) and counts as 'signal'."""
    from tessq.jobs import daemon

    try:
        return daemon.run_workers(n_workers, drain=True).stopped_by
    except KeyboardInterrupt:
        return "signal"


def _zip_job(job: db.Job) -> dict[str, Any]:
    return export_zip(None, None, job=job)


@dataclass(frozen=True)
class RunHooks:
    """Where a caller joins the flow: to say something as it goes, or to run the workers its own way."""

    on_workspace: Callable[[Workspace], None] | None = None  # opened, before the job is checked
    on_scan: Callable[[scan.ScanSummary], None] | None = None  # scanned, before the workers start
    drain: Callable[[int, db.Job], str] = _drain_here  # runs the workers; returns how they stopped
    export: Callable[[db.Job], dict[str, Any]] = _zip_job  # the zip of a drained job (RunRequest.zip)


@dataclass
class RunOutcome:
    """What a run did: in which workspace, the scan's summary, the report, how the workers stopped, the zip
    (if written)."""

    workspace: Workspace
    summary: scan.ScanSummary
    report: dict[str, Any]
    stopped_by: str
    zip: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        return run_exit_code(self.stopped_by, self.report["batch_summary"]["errors"])


def run_exit_code(stopped_by: str, failed: int) -> int:
    """`tessq run`'s exit status: 130 if the workers were stopped early, else 3 if some images failed, else 0."""
    if stopped_by != DRAINED:
        return defaults.EXIT_INTERRUPTED
    return defaults.EXIT_SOME_FAILED if failed else defaults.EXIT_OK


def open_run(request: RunRequest, on_workspace: Callable[[Workspace], None] | None = None) -> Workspace:
    """Refuse bad locations and work-losing option changes before anything is created, open the workspace
    (bound to this process) and start logging (console at the request's level, and OUT/batch_processing.log)."""
    check_locations(request.input_dir, request.output_dir)
    ws = open_workspace(request.workspace, output_dir=request.output_dir, command=request.command)
    if on_workspace is not None:
        on_workspace(ws)
    # --no-resume redoes every image on purpose: no option check, but still one IN per OUT
    check_job(request.input_dir, request.output_dir, request.options, force_options=request.forced)
    start_logging(request.log_level, _log_place(request.output_dir))
    return ws


def _log_place(output_dir: Path | str) -> Path | str:
    return storage.resolve(output_dir)  # never Path.resolve(): an s3:// OUT (folded by typer to 's3:/') stays a URL


def scan_run(request: RunRequest, ws: Workspace) -> scan.ScanSummary:
    """The run's scan: records and queues the tree (after forgetting the input's records when not resuming)."""
    if not request.resume:
        forget_job(request.input_dir)
    return scan_and_enqueue(
        request.input_dir,
        request.output_dir,
        request.options,
        follow_symlinks=request.follow_symlinks,
        workspace=ws,
        force_options=request.forced,
        check_output=request.check_output,
    )


def run_opened(request: RunRequest, ws: Workspace, hooks: RunHooks | None = None) -> RunOutcome:
    """Scan, workers until drained (or stopped), report, and the zip of a drained job, in the open `ws`."""
    hooks = hooks or RunHooks()
    summary = scan_run(request, ws)
    choice = select_job(ws, out=request.output_dir)
    assert choice is not None  # require=True: no job raises ConfigError
    if hooks.on_scan is not None:
        hooks.on_scan(summary)
    stopped_by = hooks.drain(request.n_workers, choice.job)
    rep = finish_report(choice.job)
    zipped = hooks.export(choice.job) if request.zip and stopped_by == DRAINED else None
    return RunOutcome(ws, summary, rep, stopped_by, zipped)


def run(request: RunRequest, hooks: RunHooks | None = None) -> RunOutcome:
    """The whole run, written once for `tessq run`, `tessq demo` and `BatchTesselator.run_batch`: check and
    open, scan, workers until drained, report, zip. Raises TessqError for what the user must fix first."""
    hooks = hooks or RunHooks()
    ws = open_run(request, hooks.on_workspace)
    return run_opened(request, ws, hooks)
