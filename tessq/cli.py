"""The `tessq` command line (typer): parse arguments, call tessq.pipeline and friends, print results.

No logic lives here; every command is a thin wrapper so the Python API and the CLI behave the same.
tessq.pipeline (and through it numpy, tifffile, the databases) is imported by the commands that run, so
`tessq --version` and `--help` start in a fraction of that time.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tessq import __version__, defaults
from tessq.errors import TessqError
from tessq.options import PNG_PRESETS, SliceOptions, parse_grid

if TYPE_CHECKING:
    from rich.console import Console

    from tessq.jobs import db
    from tessq.jobs import scan as scan_mod
    from tessq.jobs.settings import Workspace


def interruptible(command: Callable[..., Any]) -> Callable[..., Any]:
    """Ctrl-C / SIGTERM inside a command exits 130 (resume by running it again), not click's "Aborted!" 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            stderr().print("interrupted: run the same command again to resume")
            raise typer.Exit(defaults.EXIT_INTERRUPTED) from None

    return wrapper


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,  # an unexpected error is one line (main), never a 60-line rich traceback
    help="Cut folders of large TIFFs into exact, lossless pieces: scan, run workers, watch, report, verify, ship.",
)


@functools.cache
def stdout() -> Console:
    """The command output (made on first use: `tessq --version` never loads rich)."""
    from rich.console import Console

    return Console(soft_wrap=True)  # paths in output stay on one line when piped


@functools.cache
def stderr() -> Console:
    """Errors, notes and progress bars (made on first use, as stdout())."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)  # never break an error message mid-path


@dataclasses.dataclass
class CliSettings:
    """The global options (`tessq -w OUT --log-level X CMD`, or after the command), held in typer's ctx.obj."""

    workspace: Path | None = None
    log_level: str = "INFO"


def _settings_of(ctx: typer.Context) -> CliSettings:
    """The global options the root callback put in the invocation's context (defaults if it did not run)."""
    found = ctx.find_object(CliSettings)
    return found if found is not None else CliSettings()


# ------------------------------------------------------------------ shared options

NumPieces = Annotated[
    int, typer.Option("--num-pieces", "-n", min=1, help="Pieces per image (a rows x cols grid, closest to square).")
]
Grid = Annotated[str | None, typer.Option("--grid", help="Explicit grid ROWSxCOLS, e.g. 2x4 (overrides --num-pieces).")]
TileSize = Annotated[
    int | None, typer.Option("--tile-size", min=1, help="Fixed square tiles of this many px instead of N pieces.")
]
Overlap = Annotated[
    int, typer.Option("--overlap", min=0, help="Pixels shared by neighbouring tiles (with --tile-size).")
]
MinSize = Annotated[
    int, typer.Option("--min-size", min=0, help="Skip images whose width or height is below this (px).")
]
Format = Annotated[
    str, typer.Option("--format", help="png: PNG wherever it is lossless, else TIFF; tiff: always TIFF.")
]
Png = Annotated[str, typer.Option("--png", help=f"PNG speed/size trade-off, all lossless: {'|'.join(PNG_PRESETS)}.")]
CompressLevel = Annotated[
    int | None, typer.Option("--compress-level", min=0, max=12, help="Deflate level override (0-12).")
]
WorldFiles = Annotated[
    bool, typer.Option("--world-files", help="Write .pgw/.tfw world files beside slices of GeoTIFFs.")
]
Series = Annotated[int, typer.Option("--series", min=0, help="Which image series of a multi-image TIFF to cut.")]
SelfCheck = Annotated[
    str,
    typer.Option(
        "--self-check",
        help="Decode slices just written and compare them with their pixels before an image is done: sample "
        "(every slice of TIFF/palette/sub-byte kinds; else one slice per image, plus the first and last "
        "slice of a kind's first image), full, or off.",
    ),
]
FollowSymlinks = Annotated[bool, typer.Option("--follow-symlinks", help="Follow symbolic links (loops are detected).")]
CheckOutput = Annotated[
    str,
    typer.Option(
        "--check-output",
        help="How done images' folders are checked before counting as done: stat (default: every slice there with "
        "its recorded size), hash (re-hash every slice against metadata.json's sha256), none. Missing or "
        "damaged ones are queued again.",
    ),
]


@dataclasses.dataclass(frozen=True)
class SliceFlags:
    """The cut and scan flags `scan` and `run` share, declared once: `@slice_flags` turns each field into the
    command's option of that type (help and default from the alias) and hands the command one SliceFlags."""

    num_pieces: NumPieces = defaults.NUM_PIECES
    grid: Grid = None
    tile_size: TileSize = None
    overlap: Overlap = 0
    min_size: MinSize = defaults.MIN_IMAGE_SIZE
    fmt: Format = defaults.SLICE_FORMAT
    png: Png = defaults.PNG_PRESET
    compress_level: CompressLevel = None
    world_files: WorldFiles = False
    series: Series = 0
    self_check: SelfCheck = defaults.SELF_CHECK
    follow_symlinks: FollowSymlinks = False
    check_output: CheckOutput = "stat"

    def options(self) -> SliceOptions:
        """The cut options these flags ask for (ConfigError for a malformed --grid)."""
        return SliceOptions(
            num_pieces=self.num_pieces,
            grid=parse_grid(self.grid) if self.grid else None,
            tile_size=self.tile_size,
            overlap=self.overlap,
            min_size=self.min_size,
            format=self.fmt,
            png_preset=self.png,
            compress_level=self.compress_level,
            world_files=self.world_files,
            series=self.series,
            self_check=self.self_check,
        )


def slice_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """Put SliceFlags' options where `command` has its `flags: SliceFlags` parameter, and call it with them."""
    base = inspect.signature(command, eval_str=True)
    hints = typing.get_type_hints(SliceFlags, include_extras=True)
    fields = dataclasses.fields(SliceFlags)
    flag_params = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
        for f in fields
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        flags = SliceFlags(**{f.name: kwargs.pop(f.name) for f in fields})
        return command(*args, flags=flags, **kwargs)

    params: list[inspect.Parameter] = []
    for p in base.parameters.values():
        params.extend(flag_params if p.name == "flags" else [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)])
    wrapper.__signature__ = base.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    del wrapper.__wrapped__  # typer must read the signature above, not the command's own
    return wrapper


WORKSPACE_HELP = (
    "The job's output folder OUT (its .tessq/ holds the job's state), or any folder holding a .tessq/. "
    "Default: found from OUT, else from the current folder and its parents."
)
WorkspaceOpt = Annotated[Path | None, typer.Option("--workspace", "-w", help=WORKSPACE_HELP, show_default=False)]
LogLevelOpt = Annotated[
    str | None, typer.Option("--log-level", help="Console log level: DEBUG, INFO, WARNING, ERROR.", show_default=False)
]
OutArg = Annotated[
    Path | None,
    typer.Argument(
        help="The job's output folder (default: the .tessq/ found from the current folder upwards).",
        show_default=False,
        metavar="[OUT]",
    ),
]
OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="The job's output folder (default: the .tessq/ found from the current folder upwards).",
        show_default=False,
    ),
]
JobOpt = Annotated[
    int | None,
    typer.Option(
        "--job", min=1, help="Which job, when several share one database (ids: tessq report).", show_default=False
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(
        "--workers", "--max-workers", min=1, help="Worker processes (default: CPU count).", show_default=False
    ),
]
ForceOptions = Annotated[
    bool,
    typer.Option(
        "--force-options",
        help="Accept cut options that differ from the job's: finished images "
        "made with the old ones are cut again (without it, such a scan is refused).",
    ),
]


def global_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Also accept the global --workspace/-w and --log-level after the command (`tessq status -w OUT`); a
    command with a `cli: CliSettings` parameter is given the invocation's global options in it."""
    base = inspect.signature(command, eval_str=True)
    wants_cli = "cli" in base.parameters

    @functools.wraps(command)
    def wrapper(
        *args: Any,
        typer_ctx: typer.Context,
        workspace_opt: Path | None = None,
        log_level_opt: str | None = None,
        **kwargs: Any,
    ) -> Any:
        given = _settings_of(typer_ctx)
        if workspace_opt is not None:
            given.workspace = workspace_opt
        if log_level_opt is not None:
            given.log_level = log_level_opt.upper()
        try:
            return command(*args, **kwargs, **({"cli": given} if wants_cli else {}))
        except Exception as exc:  # a workspace that cannot be written, a database that cannot be reached
            _storage_failure(exc, given)
            raise

    extra = [
        inspect.Parameter("typer_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
        inspect.Parameter("workspace_opt", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=WorkspaceOpt),
        inspect.Parameter("log_level_opt", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=LogLevelOpt),
    ]
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in base.parameters.values() if p.name != "cli"]
    wrapper.__signature__ = base.replace(parameters=[*params, *extra])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {
        **{p.name: p.annotation for p in params},
        "typer_ctx": typer.Context,
        "workspace_opt": WorkspaceOpt,
        "log_level_opt": LogLevelOpt,
    }
    del wrapper.__wrapped__  # typer must read the signature above, not the command's own
    return wrapper


def fail(exc: Exception, code: int = defaults.EXIT_USAGE) -> None:
    stderr().print(f"[red]error:[/red] {exc}")
    raise typer.Exit(code)


def version_callback(value: bool) -> None:
    if value:
        print(f"tessq {__version__}")  # what rich would print, without loading it
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace",
            "-w",
            envvar="TESSQ_WORKSPACE",
            help=WORKSPACE_HELP,
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="Console log level: DEBUG, INFO, WARNING, ERROR.")
    ] = "INFO",
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    ctx.obj = CliSettings(workspace, log_level.upper())


def _open_job(
    cli: CliSettings,
    command: str,
    out: Path | None = None,
    job_id: int | None = None,
    require_job: bool = True,
    note: bool = True,
) -> tuple[Workspace, db.Job | None]:
    """The workspace and the job a reading command speaks of (settings.py has the rule); nothing is created.
    When several jobs share the database, says which one this is and how to pick another."""
    from tessq import pipeline

    try:
        ws = pipeline.open_workspace(cli.workspace, create=False, output_dir=out, command=command)
        _legacy_note(ws, out)
        choice = pipeline.select_job(ws, out=out, job_id=job_id, require=require_job)
    except TessqError as exc:
        fail(exc)
    except Exception as exc:
        _storage_failure(exc, cli)
        raise
    if note and choice is not None and choice.note:
        stderr().print(f"[yellow]note:[/yellow] {choice.note}")
    return ws, (choice.job if choice else None)


def _job_of(cli: CliSettings, command: str, out: Path | None = None, job_id: int | None = None) -> db.Job:
    """The job a command that needs one speaks of (_open_job refuses a workspace without a job)."""
    _, job = _open_job(cli, command, out, job_id)
    assert job is not None  # require_job=True
    return job


def _legacy_note(ws: Workspace, out: Path | str | None) -> None:
    if ws.legacy and out is not None:
        from tessq.jobs.settings import legacy_message

        stderr().print(f"[yellow]note:[/yellow] {legacy_message(ws, out)}")


def _open_for(
    cli: CliSettings, input_dir: Path, out: Path | str, options: SliceOptions, force_options: bool, command: str
) -> Workspace:
    """scan: refuse bad locations and work-losing option changes before creating any file or folder."""
    from tessq import pipeline

    pipeline.check_locations(input_dir, out)
    ws = pipeline.open_workspace(cli.workspace, output_dir=out, command=command)
    _legacy_note(ws, out)
    pipeline.check_job(input_dir, out, options, force_options=force_options)
    return ws


def _storage_failure(exc: Exception, cli: CliSettings | None = None) -> None:
    """Exit with one line (exit code 2) when `exc` is a failure to open or write the workspace's databases."""
    if isinstance(exc, (TessqError, typer.Exit)):
        return
    import os

    from tessq.jobs import db
    from tessq.jobs import queue as tq

    ws = tq.workspace()  # what was being opened (None when the queue itself could not be set up)
    url = ws.db_url if ws is not None else os.environ.get("TESSQ_DB_URL")
    where = ws.state_dir if ws is not None else (cli.workspace if cli else os.environ.get("TESSQ_WORKSPACE"))
    problem = db.storage_problem(exc, url, where)
    if problem is not None:
        fail(problem)


# ------------------------------------------------------------------ commands


@app.command()
@global_options
@slice_flags
@interruptible
def scan(
    input_dir: Annotated[Path, typer.Argument(help="Folder tree (or s3://BUCKET/PREFIX) to scan for TIFFs.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder or s3://BUCKET/PREFIX (default: <IN>_tessq beside IN)."),
    ] = None,
    *,
    cli: CliSettings,
    flags: SliceFlags,
    force_options: ForceOptions = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Record the job settings and every TIFF under IN; queue the eligible ones. Safe to re-run.

    The job's state goes to OUT/.tessq/: `tessq workers OUT`, `tessq status OUT` (or run them inside OUT)."""
    from tessq import pipeline

    try:
        options = flags.options()
        target = out or pipeline.default_output_dir(input_dir)
        ws = _open_for(cli, input_dir, target, options, force_options, "scan")
        pipeline.start_logging(cli.log_level, target)
        summary = pipeline.scan_and_enqueue(
            input_dir,
            target,
            options,
            follow_symlinks=flags.follow_symlinks,
            workspace=ws,
            force_options=force_options,
            check_output=flags.check_output,
        )
    except TessqError as exc:
        fail(exc)
    if as_json:
        stdout().print_json(json.dumps(summary.as_dict()))
        return
    print_scan(summary)


def print_scan(summary: scan_mod.ScanSummary) -> None:
    from rich.table import Table

    table = Table(title=f"scan of {summary.input_dir}", show_header=False)
    table.add_row("TIFFs found", str(summary.found))
    table.add_row("queued (new)", str(summary.queued))
    table.add_row("queued again (changed)", str(summary.requeued))
    table.add_row("queued again (output missing/damaged)", str(summary.requeued_damaged))
    table.add_row("already done, unchanged", str(summary.already_done))
    table.add_row("queued earlier / running / failed", str(summary.in_progress_or_failed))
    for reason, n in sorted(summary.skipped.items()):
        table.add_row(f"skipped: {reason}", str(n))
    table.add_row("unreadable (failed at scan)", str(len(summary.failed_at_scan)))
    table.add_row("folders with TIFFs", str(summary.folders_with_tiffs))
    for reason, n in sorted(summary.folders_skipped.items()):
        table.add_row(f"folders skipped: {reason}", str(n))
    counted = {("file", r) for r in summary.skipped} | {("folder", r) for r in summary.folders_skipped}
    others: dict[str, int] = {}  # hidden, excluded, symlink, tessq_output: not in the counts above
    for e in summary.skipped_entries:
        if (e["kind"], e["reason"]) not in counted:
            label = f"{e['kind']}s not scanned: {e['reason']}"
            others[label] = others.get(label, 0) + 1
    for label, n in sorted(others.items()):
        table.add_row(label, str(n))
    table.add_row("output", summary.output_dir)
    stdout().print(table)
    # each skipped file/folder and each image queued again is named by the scan's log (console and
    # OUT/batch_processing.log) and by `tessq scan --json`
    for f in summary.failed_at_scan[:10]:
        stderr().print(f"[yellow]unreadable:[/yellow] {f['message']}")


@app.command()
@global_options
@interruptible
def workers(
    out: OutArg = None,
    n_workers: Workers = None,
    legacy_n: Annotated[int | None, typer.Option("--n", "-n", min=1, hidden=True)] = None,
    drain: Annotated[bool, typer.Option("--drain", help="Exit when nothing is left to do.")] = False,
    *,
    cli: CliSettings,
) -> None:
    """Run worker processes until Ctrl-C/SIGTERM (graceful; twice = at once) or, with --drain, until done.

    They serve the queue of the job in OUT (or of the .tessq/ found from the current folder upwards)."""
    from tessq import pipeline
    from tessq.jobs import daemon

    if legacy_n is not None:
        stderr().print(
            "[yellow]note:[/yellow] `tessq workers --n/-n N` is deprecated (-n is --num-pieces in scan and "
            "run): use --workers N"
        )
        n_workers = n_workers or legacy_n
    _, job = _open_job(cli, "workers", out, require_job=not _shared_db(), note=False)  # they serve every queued job
    pipeline.start_logging(cli.log_level, job.output_dir if job else None)
    try:
        outcome = daemon.run_workers(n_workers or defaults.WORKERS, drain=drain)
    except KeyboardInterrupt:  # a second Ctrl-C/SIGTERM: running images were handed back to the queue
        stderr().print("stopped at once; running images went back to the queue")
        raise typer.Exit(defaults.EXIT_INTERRUPTED) from None
    except TessqError as exc:  # the status table was lost or damaged, or the supervisor gave up
        fail(exc)
    stdout().print(
        f"workers stopped ({outcome.stopped_by}); reclaimed {outcome.reaped}, re-enqueued {outcome.repaired}"
    )


@app.command()
@global_options
def status(
    out: OutArg = None,
    job_id: JobOpt = None,
    once: Annotated[
        bool, typer.Option("--once", help="Print one snapshot and exit (the default when output is not a terminal).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one snapshot as JSON and exit.")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.2, help="Refresh every N seconds.")] = 2.0,
    *,
    cli: CliSettings,
) -> None:
    """Live view: counts by state, progress and ETA, throughput, what each worker holds, latest errors.

    Live in a terminal; piped, redirected or run from a notebook cell (`!tessq status`) it prints one
    snapshot, so it never blocks a script or a cell."""
    import time

    from rich.live import Live

    from tessq.jobs import status as st

    job = _job_of(cli, "status", out, job_id)
    snap = functools.partial(st.snapshot, job.id)
    if as_json:
        stdout().print_json(json.dumps(snap()))
        return
    if once or not stdout().is_terminal:
        stdout().print(st.render(snap()))
        return
    try:
        with Live(st.render(snap()), console=stdout(), refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                live.update(st.render(snap()))
    except KeyboardInterrupt:
        pass


@app.command()
@global_options
def report(
    out: OutArg = None,
    job_id: JobOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON.")] = False,
    *,
    cli: CliSettings,
) -> None:
    """One job's final report from the status table; also written to OUT/batch_report.json."""
    from tessq import pipeline

    job = _job_of(cli, "report", out, job_id)
    rep = pipeline.finish_report(job)
    if as_json:
        stdout().print_json(json.dumps(rep))
    else:
        print_report(rep)


def print_report(rep: dict[str, Any]) -> None:
    from rich.table import Table

    job = rep.get("job") or {}
    title = f"batch_summary: {job['input_dir']} -> {job['output_dir']}" if job else "batch_summary"
    table = Table(title=title, show_header=False)
    for key, value in rep["batch_summary"].items():
        table.add_row(key, str(value))
    stdout().print(table)
    for reason, n in rep["skip_reasons"].items():
        stdout().print(f"skipped ({reason}): {n}")
    skipped = rep.get("skipped", [])
    for e in skipped[:20]:
        stdout().print(f"skipped {e['kind']} {e['path']}: {e['reason']}")
    if len(skipped) > 20:
        stdout().print(f"... and {len(skipped) - 20} more skipped (tessq report --json lists them all)")
    states = rep["states"]
    if states.get("queued") or states.get("running"):
        stdout().print(
            f"still to do: {states.get('queued', 0)} queued, {states.get('running', 0)} running "
            "(`tessq workers` processes them; `tessq status` watches)"
        )
        for u in rep.get("unfinished", [])[:20]:
            holder = f" ({u['worker']})" if u.get("worker") else ""
            stdout().print(f"  {u['status']}: {u['file']}{holder}")
    for e in rep["errors"][:20]:
        stderr().print(f"[red]{e['type']}[/red] {e['message']}")
    if len(rep["errors"]) > 20:
        stderr().print(f"... and {len(rep['errors']) - 20} more errors (tessq report --json)")


@app.command()
@global_options
@slice_flags
@interruptible
def run(
    input_dir: Annotated[Path, typer.Argument(help="Input folder tree.")],
    output_dir: Annotated[Path, typer.Argument(help="Output folder.")],
    *,
    cli: CliSettings,
    flags: SliceFlags,
    n_workers: Workers = None,
    force_options: ForceOptions = False,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Keep finished work (default). --no-resume redoes every image.")
    ] = True,
    zip_: Annotated[bool, typer.Option("--zip", help="Also write OUT/<OUT name>_results.zip.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Scan + workers until drained + report, in one go. Exit 0 if nothing failed, 3 if some images failed."""
    from tessq import pipeline

    hooks = pipeline.RunHooks(
        on_workspace=lambda ws: _legacy_note(ws, output_dir),
        on_scan=None if as_json else print_scan,
        export=lambda job: _export_zip(None, None, job),
    )
    try:
        request = pipeline.RunRequest(
            input_dir,
            output_dir,
            flags.options(),
            resume=resume,
            follow_symlinks=flags.follow_symlinks,
            check_output=flags.check_output,
            force_options=force_options,
            n_workers=n_workers or defaults.WORKERS,
            zip=zip_,
            workspace=cli.workspace,
            log_level=cli.log_level,
        )
        outcome = pipeline.run(request, hooks)
    except TessqError as exc:  # refused before the work, or the status table was lost or damaged during it
        fail(exc)
    if as_json:
        stdout().print_json(json.dumps(outcome.report))
    else:
        print_report(outcome.report)
    if outcome.stopped_by != pipeline.DRAINED:
        stderr().print("interrupted: run the same command again to resume")
    raise typer.Exit(outcome.exit_code)


@app.command()
@global_options
def retry(
    out: OutArg = None,
    job_id: JobOpt = None,
    failed: Annotated[bool, typer.Option("--failed", help="Re-queue every failed image (the default).")] = True,
    error_type: Annotated[
        list[str] | None, typer.Option("--type", help="Only failures of this type (repeatable).")
    ] = None,
    different: Annotated[
        bool | None,
        typer.Option(
            "--different/--no-different",
            help="Also re-queue done images `tessq verify` found different (default: yes, unless --type is given).",
        ),
    ] = None,
    *,
    cli: CliSettings,
) -> None:
    """Re-queue failed images (fresh attempts) and images `tessq verify` found different; run `tessq workers`."""
    from tessq import pipeline

    job = _job_of(cli, "retry", out, job_id)
    n = pipeline.retry_failed(error_type, job, different)
    stdout().print(f"re-queued {n} image(s) (failed, or found different by tessq verify)")


@app.command()
@global_options
@interruptible
def verify(
    out: OutArg = None,
    job_id: JobOpt = None,
    sample: Annotated[int | None, typer.Option("--sample", min=1, help="Check only the first N done images.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Processes checking images in parallel (default: cores).")
    ] = None,
    *,
    cli: CliSettings,
) -> None:
    """Reassemble every done image and compare it bit for bit with its source; record the verdict."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from tessq import pipeline

    job = _job_of(cli, "verify", out, job_id)
    with Progress(
        TextColumn("verify"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=stderr(),
        transient=True,
    ) as bar:
        task = bar.add_task("", total=None)

        def tick(i: int, total: int, name: str) -> None:
            bar.update(task, completed=i, total=total, description=name)

        result = pipeline.verify_done(tick, sample, job, workers)
    if as_json:
        stdout().print_json(json.dumps(result))
    else:
        stdout().print(
            f"checked {result['checked']}: {result['identical']} identical, {len(result['different'])} different"
        )
        for detail in result["details"]:
            stderr().print(f"[red]not identical:[/red] {detail['file']}")
            for p in detail["problems"]:
                stderr().print(f"  {p['kind']}: {p['file'] or '(image)'}: {p['detail']}")
            if detail["problems_total"] > len(detail["problems"]):
                stderr().print(f"  ... {detail['problems_total'] - len(detail['problems'])} more")
    if result["different"]:
        raise typer.Exit(defaults.EXIT_SOME_FAILED)


def _export_zip(path: Path | None, folder: str | None, job: db.Job | None = None) -> dict[str, Any]:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from tessq import pipeline

    with Progress(
        TextColumn("zip"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=stderr(), transient=True
    ) as bar:
        task = bar.add_task("zip", total=None)
        result = pipeline.export_zip(
            path, folder, lambda done, total: bar.update(task, completed=done, total=total), job=job
        )
    stdout().print(
        f"wrote {result['path']}: {result['entries']} entries, {result['bytes'] / 1e6:.1f} MB, "
        f"verified={result['verified']}"
    )
    return result


@app.command()
@global_options
@interruptible
def export(
    path: Annotated[Path | None, typer.Argument(help="Archive path (default OUT/<OUT name>_results.zip).")] = None,
    out: OutOpt = None,
    job_id: JobOpt = None,
    zip_: Annotated[bool, typer.Option("--zip", help="Write a ZIP archive (the only format today).")] = True,
    folder: Annotated[str | None, typer.Option("--folder", help="Only this sub-folder of the output.")] = None,
    *,
    cli: CliSettings,
) -> None:
    """Package one job's done images and reports into a ZIP: `tessq export --zip [PATH] [--out OUT]` (streamed,
    ZIP64, checked; the job's .tessq/ state is never in it)."""
    _, job = _open_job(cli, "export", out, job_id)
    try:
        _export_zip(path, folder, job)
    except TessqError as exc:
        fail(exc, 1)


@app.command()
@global_options
@interruptible
def upload(
    url: Annotated[str, typer.Argument(help="Destination s3://BUCKET/PREFIX.")],
    out: OutOpt = None,
    job_id: JobOpt = None,
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint (MinIO, Ceph...).")
    ] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", help="AWS profile name (else the standard credential chain).")
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Parallel transfers.")] = 8,
    *,
    cli: CliSettings,
) -> None:
    """Upload one job's done images and reports to S3; resumable and checksummed."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from tessq import pipeline

    _, job = _open_job(cli, "upload", out, job_id)
    with Progress(
        TextColumn("upload"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=stderr(), transient=True
    ) as bar:
        task = bar.add_task("upload", total=None)
        try:
            result = pipeline.upload(
                url,
                endpoint_url=endpoint_url,
                profile=profile,
                concurrency=concurrency,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                job=job,
            )
        except TessqError as exc:
            fail(exc, 1)
    stdout().print(
        f"uploaded {result['uploaded']} file(s), skipped {result['skipped']} already there, "
        f"{result['bytes_uploaded'] / 1e6:.1f} MB; verified {result.get('verified', 0)} objects in the target"
    )
    if result.get("failed"):
        for f in result["failed"]:
            stderr().print(f"[red]failed:[/red] {f}")
        raise typer.Exit(1)


@app.command()
@global_options
@interruptible
def demo(
    directory: Annotated[Path, typer.Argument(help="Where to create the sample tree and its output.")] = Path(
        "tessq-demo"
    ),
    n_workers: Annotated[int, typer.Option("--workers", "--max-workers", min=1, help="Worker processes.")] = (
        defaults.WORKERS
    ),
) -> None:
    """Generate a realistic sample tree, then scan, run, report and verify it end to end."""
    from tessq import demo as demo_mod

    code = demo_mod.run_demo(directory, n_workers, stdout())
    raise typer.Exit(code)


def main() -> None:
    """Run the app; tessq.entry.main (the console script) wraps this with the SIGTERM handling."""
    import os

    try:
        app()
    except TessqError as exc:  # anything not caught by a command still prints as one clear line
        stderr().print(f"[red]error:[/red] {exc}")
        sys.exit(defaults.EXIT_USAGE)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # a bug or an unforeseen input: one line, the traceback only when asked for
        try:
            _storage_failure(exc)  # an unwritable workspace, an unreachable database: what to fix, exit 2
        except typer.Exit as stop:
            sys.exit(stop.exit_code)
        if os.environ.get("TESSQ_DEBUG"):
            raise
        stderr().print(
            f"[red]error:[/red] {type(exc).__name__}: {exc} (set TESSQ_DEBUG=1 for the traceback; "
            f"please report it if the input looks valid)"
        )
        sys.exit(1)


def _shared_db() -> bool:
    """Whether the status table is a shared database (TESSQ_DB_URL), where workers may start before any scan."""
    import os

    return bool(os.environ.get("TESSQ_DB_URL"))
