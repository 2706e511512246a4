"""The `tessq` command line (typer): parse arguments, call tessq.pipeline and friends, print results.

No logic lives here; every command is a thin wrapper so the Python API and the CLI behave the same.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from tessq import __version__, defaults, pipeline
from tessq.errors import TessqError
from tessq.options import PNG_PRESETS, SliceOptions, parse_grid


def interruptible(command: Callable[..., Any]) -> Callable[..., Any]:
    """Ctrl-C / SIGTERM inside a command exits 130 (resume by running it again), not click's "Aborted!" 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            err.print("interrupted: run the same command again to resume")
            raise typer.Exit(defaults.EXIT_INTERRUPTED) from None

    return wrapper


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="Cut folders of large TIFFs into exact, lossless pieces: scan, run workers, watch, report, verify, ship.",
)
console = Console(soft_wrap=True)  # paths in output stay on one line when piped
err = Console(stderr=True, soft_wrap=True)  # never break an error message mid-path
STATE: dict[str, Any] = {"workspace": None, "log_level": "INFO"}

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
        "(risky kinds and each kind's first image in full, then one slice per image), full, or off.",
    ),
]
FollowSymlinks = Annotated[bool, typer.Option("--follow-symlinks", help="Follow symbolic links (loops are detected).")]


def build_options(
    num_pieces: int,
    grid: str | None,
    tile_size: int | None,
    overlap: int,
    min_size: int,
    fmt: str,
    png: str,
    compress_level: int | None,
    world_files: bool,
    series: int,
    self_check: str = defaults.SELF_CHECK,
) -> SliceOptions:
    return SliceOptions(
        num_pieces=num_pieces,
        grid=parse_grid(grid) if grid else None,
        tile_size=tile_size,
        overlap=overlap,
        min_size=min_size,
        format=fmt,
        png_preset=png,
        compress_level=compress_level,
        world_files=world_files,
        series=series,
        self_check=self_check,
    )


def fail(exc: Exception, code: int = defaults.EXIT_USAGE) -> None:
    err.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(code)


def version_callback(value: bool) -> None:
    if value:
        console.print(f"tessq {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace",
            "-w",
            envvar="TESSQ_WORKSPACE",
            help="Folder whose .tessq/ holds the status and queue databases (default: current folder).",
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="Console log level: DEBUG, INFO, WARNING, ERROR.")
    ] = "INFO",
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    STATE["workspace"], STATE["log_level"] = workspace, log_level.upper()


def _open(create: bool = True) -> Any:
    try:
        return pipeline.open_workspace(STATE["workspace"], create=create)
    except TessqError as exc:
        fail(exc)


# ------------------------------------------------------------------ commands


@app.command()
@interruptible
def scan(
    input_dir: Annotated[Path, typer.Argument(help="Folder tree (or s3://BUCKET/PREFIX) to scan for TIFFs.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder or s3://BUCKET/PREFIX (default: <IN>_tessq beside IN)."),
    ] = None,
    num_pieces: NumPieces = defaults.NUM_PIECES,
    grid: Grid = None,
    tile_size: TileSize = None,
    overlap: Overlap = 0,
    min_size: MinSize = defaults.MIN_IMAGE_SIZE,
    fmt: Format = defaults.SLICE_FORMAT,
    png: Png = defaults.PNG_PRESET,
    compress_level: CompressLevel = None,
    world_files: WorldFiles = False,
    series: Series = 0,
    self_check: SelfCheck = defaults.SELF_CHECK,
    follow_symlinks: FollowSymlinks = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Record the job settings and every TIFF under IN; queue the eligible ones. Safe to re-run."""
    try:
        options = build_options(
            num_pieces, grid, tile_size, overlap, min_size, fmt, png, compress_level, world_files, series, self_check
        )
        ws = _open()
        pipeline.start_logging(STATE["log_level"], out or pipeline.default_output_dir(input_dir))
        summary = pipeline.scan_and_enqueue(input_dir, out, options, follow_symlinks=follow_symlinks, workspace=ws)
    except TessqError as exc:
        fail(exc)
    if as_json:
        console.print_json(json.dumps(summary.as_dict()))
        return
    print_scan(summary)


def print_scan(summary: Any) -> None:
    table = Table(title=f"scan of {summary.input_dir}", show_header=False)
    table.add_row("TIFFs found", str(summary.found))
    table.add_row("queued (new)", str(summary.queued))
    table.add_row("queued again (changed)", str(summary.requeued))
    table.add_row("already done, unchanged", str(summary.already_done))
    table.add_row("queued earlier / running / failed", str(summary.in_progress_or_failed))
    for reason, n in sorted(summary.skipped.items()):
        table.add_row(f"skipped: {reason}", str(n))
    table.add_row("unreadable (failed at scan)", str(len(summary.failed_at_scan)))
    table.add_row("folders with TIFFs", str(summary.folders_with_tiffs))
    for reason, n in sorted(summary.folders_skipped.items()):
        table.add_row(f"folders skipped: {reason}", str(n))
    table.add_row("output", summary.output_dir)
    console.print(table)
    for f in summary.failed_at_scan[:10]:
        err.print(f"[yellow]unreadable:[/yellow] {f['message']}")


@app.command()
@interruptible
def workers(
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="Number of worker processes.")] = 2,
    drain: Annotated[bool, typer.Option("--drain", help="Exit when nothing is left to do.")] = False,
) -> None:
    """Run N worker processes until Ctrl-C/SIGTERM (graceful; twice = at once) or, with --drain, until done."""
    from tessq import worker

    _open()
    pipeline.start_logging(STATE["log_level"], pipeline.latest_output_dir())
    try:
        outcome = worker.run_workers(n, drain=drain)
    except KeyboardInterrupt:  # a second Ctrl-C/SIGTERM: running images were handed back to the queue
        err.print("stopped at once; running images went back to the queue")
        raise typer.Exit(defaults.EXIT_INTERRUPTED) from None
    console.print(f"workers stopped ({outcome.stopped_by}); reclaimed {outcome.reaped}, re-enqueued {outcome.repaired}")


@app.command()
def status(
    once: Annotated[bool, typer.Option(
        "--once", help="Print one snapshot and exit (the default when output is not a terminal).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one snapshot as JSON and exit.")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.2, help="Refresh every N seconds.")] = 2.0,
) -> None:
    """Live view: counts by state, progress and ETA, throughput, what each worker holds, latest errors.

    Live in a terminal; piped, redirected or run from a notebook cell (`!tessq status`) it prints one
    snapshot, so it never blocks a script or a cell."""
    from tessq import status as st

    _open(create=False)
    if as_json:
        console.print_json(json.dumps(st.snapshot()))
        return
    if once or not console.is_terminal:
        console.print(st.render(st.snapshot()))
        return
    try:
        with Live(st.render(st.snapshot()), console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                live.update(st.render(st.snapshot()))
    except KeyboardInterrupt:
        pass


@app.command()
def report(
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON.")] = False,
) -> None:
    """The final report from the status table; also written to OUT/batch_report.json."""
    _open(create=False)
    rep = pipeline.finish_report()
    if as_json:
        console.print_json(json.dumps(rep))
    else:
        print_report(rep)


def print_report(rep: dict[str, Any]) -> None:
    table = Table(title="batch_summary", show_header=False)
    for key, value in rep["batch_summary"].items():
        table.add_row(key, str(value))
    console.print(table)
    for reason, n in rep["skip_reasons"].items():
        console.print(f"skipped ({reason}): {n}")
    for e in rep["errors"][:20]:
        err.print(f"[red]{e['type']}[/red] {e['message']}")
    if len(rep["errors"]) > 20:
        err.print(f"... and {len(rep['errors']) - 20} more errors (tessq report --json)")


@app.command()
@interruptible
def run(
    input_dir: Annotated[Path, typer.Argument(help="Input folder tree.")],
    output_dir: Annotated[Path, typer.Argument(help="Output folder.")],
    num_pieces: NumPieces = defaults.NUM_PIECES,
    grid: Grid = None,
    tile_size: TileSize = None,
    overlap: Overlap = 0,
    min_size: MinSize = defaults.MIN_IMAGE_SIZE,
    fmt: Format = defaults.SLICE_FORMAT,
    png: Png = defaults.PNG_PRESET,
    compress_level: CompressLevel = None,
    world_files: WorldFiles = False,
    series: Series = 0,
    self_check: SelfCheck = defaults.SELF_CHECK,
    follow_symlinks: FollowSymlinks = False,
    n_workers: Annotated[
        int | None, typer.Option("--workers", "--max-workers", min=1, help="Worker processes (default: CPU count).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Keep finished work (default). --no-resume redoes every image.")
    ] = True,
    zip_: Annotated[bool, typer.Option("--zip", help="Also write OUT/<OUT name>_results.zip.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Scan + workers until drained + report, in one go. Exit 0 if nothing failed, 3 if some images failed."""
    import os

    from tessq import worker

    try:
        options = build_options(
            num_pieces, grid, tile_size, overlap, min_size, fmt, png, compress_level, world_files, series, self_check
        )
        ws = _open()
        pipeline.start_logging(STATE["log_level"], output_dir)
        if not resume:
            pipeline.forget_job(input_dir)
        summary = pipeline.scan_and_enqueue(
            input_dir, output_dir, options, follow_symlinks=follow_symlinks, workspace=ws
        )
    except TessqError as exc:
        fail(exc)
    if not as_json:
        print_scan(summary)
    try:
        stopped_by = worker.run_workers(n_workers or os.cpu_count() or 2, drain=True).stopped_by
    except KeyboardInterrupt:  # a second Ctrl-C/SIGTERM: running images were handed back to the queue
        stopped_by = "signal"
    rep = pipeline.finish_report()
    if zip_ and stopped_by == "drained":
        _export_zip(None, None)
    if as_json:
        console.print_json(json.dumps(rep))
    else:
        print_report(rep)
    if stopped_by != "drained":
        err.print("interrupted: run the same command again to resume")
        raise typer.Exit(defaults.EXIT_INTERRUPTED)
    raise typer.Exit(defaults.EXIT_SOME_FAILED if rep["batch_summary"]["errors"] else defaults.EXIT_OK)


@app.command()
def retry(
    failed: Annotated[bool, typer.Option("--failed", help="Re-queue every failed image (the default).")] = True,
    error_type: Annotated[
        list[str] | None, typer.Option("--type", help="Only failures of this type (repeatable).")
    ] = None,
) -> None:
    """Re-queue failed images (fresh attempts); run `tessq workers` to process them."""
    _open(create=False)
    n = pipeline.retry_failed(error_type)
    console.print(f"re-queued {n} failed image(s)")


@app.command()
@interruptible
def verify(
    sample: Annotated[int | None, typer.Option("--sample", min=1, help="Check only the first N done images.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Processes checking images in parallel (default: cores).")
    ] = None,
) -> None:
    """Reassemble every done image and compare it bit for bit with its source; record the verdict."""
    _open(create=False)
    with Progress(
        TextColumn("verify"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=None)

        def tick(i: int, total: int, name: str) -> None:
            bar.update(task, completed=i, total=total, description=name)

        result = pipeline.verify_done(tick, sample, workers)
    if as_json:
        console.print_json(json.dumps(result))
    else:
        console.print(
            f"checked {result['checked']}: {result['identical']} identical, {len(result['different'])} different"
        )
        for detail in result["details"]:
            err.print(f"[red]not identical:[/red] {detail['file']}")
            for p in detail["problems"]:
                err.print(f"  {p['kind']}: {p['file'] or '(image)'}: {p['detail']}")
            if detail["problems_total"] > len(detail["problems"]):
                err.print(f"  ... {detail['problems_total'] - len(detail['problems'])} more")
    if result["different"]:
        raise typer.Exit(defaults.EXIT_SOME_FAILED)


def _export_zip(path: Path | None, folder: str | None) -> dict[str, Any]:
    with Progress(
        TextColumn("zip"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err, transient=True
    ) as bar:
        task = bar.add_task("zip", total=None)
        result = pipeline.export_zip(path, folder, lambda done, total: bar.update(task, completed=done, total=total))
    console.print(
        f"wrote {result['path']}: {result['entries']} entries, {result['bytes'] / 1e6:.1f} MB, "
        f"verified={result['verified']}"
    )
    return result


@app.command()
@interruptible
def export(
    path: Annotated[Path | None, typer.Argument(help="Archive path (default OUT/<OUT name>_results.zip).")] = None,
    zip_: Annotated[bool, typer.Option("--zip", help="Write a ZIP archive (the only format today).")] = True,
    folder: Annotated[str | None, typer.Option("--folder", help="Only this sub-folder of the output.")] = None,
) -> None:
    """Package every done image and the reports into a ZIP: `tessq export --zip [PATH]` (streamed, ZIP64, checked)."""
    _open(create=False)
    try:
        _export_zip(path, folder)
    except TessqError as exc:
        fail(exc, 1)


@app.command()
@interruptible
def upload(
    url: Annotated[str, typer.Argument(help="Destination s3://BUCKET/PREFIX.")],
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint (MinIO, Ceph...).")
    ] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", help="AWS profile name (else the standard credential chain).")
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Parallel transfers.")] = 8,
) -> None:
    """Upload every done image's files and the reports to S3; resumable and checksummed."""
    _open(create=False)
    with Progress(
        TextColumn("upload"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err, transient=True
    ) as bar:
        task = bar.add_task("upload", total=None)
        try:
            result = pipeline.upload(
                url,
                endpoint_url=endpoint_url,
                profile=profile,
                concurrency=concurrency,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except TessqError as exc:
            fail(exc, 1)
    console.print(
        f"uploaded {result['uploaded']} file(s), skipped {result['skipped']} already there, "
        f"{result['bytes_uploaded'] / 1e6:.1f} MB"
    )
    if result.get("failed"):
        for f in result["failed"]:
            err.print(f"[red]failed:[/red] {f}")
        raise typer.Exit(1)


@app.command()
@interruptible
def demo(
    directory: Annotated[Path, typer.Argument(help="Where to create the sample tree and its output.")] = Path(
        "tessq-demo"
    ),
    n_workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes.")] = 2,
) -> None:
    """Generate a realistic sample tree, then scan, run, report and verify it end to end."""
    from tessq import demo as demo_mod

    code = demo_mod.run_demo(directory, n_workers, console)
    raise typer.Exit(code)


def main() -> None:
    """Run the app; tessq.entry.main (the console script) wraps this with the SIGTERM handling."""
    try:
        app()
    except TessqError as exc:  # anything not caught by a command still prints as one clear line
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(defaults.EXIT_USAGE)
