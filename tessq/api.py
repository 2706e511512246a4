"""The seed's Python API: BatchJob (the settings) and BatchTesselator (runs the batch, returns the report).

It drives the same run flow (pipeline.run_opened), queue, workers and status table as the CLI: the scan
runs in this process, the workers run as a `tessq workers --drain` child process (safe inside Jupyter,
which must not fork).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tessq import defaults, pipeline, storage
from tessq.jobs import db
from tessq.options import SliceOptions


def _location(value: str | Path) -> Path | str:
    """A local folder as a Path; an S3 URL stays a string (storage.location_value)."""
    return storage.location_value(value)


@dataclass
class BatchJob:
    """What to cut and how; the seed's parameters first, tessq's extras after them.

    input_dir / output_dir: the folder tree to scan for .tif/.tiff files, and where the mirrored
    image folders, batch_report.json and batch_processing.log go (must differ from input_dir).
    num_pieces: slices per image (a rows x cols grid closest to square). max_workers: worker
    processes. min_image_size: images whose width or height is below this many px are skipped.
    skip_existing / resume_mode: keep work already done (both True by default); setting either to
    False forgets this input's records and redoes every image. log_level: DEBUG, INFO, WARNING, ERROR
    (the console, stderr; OUT/batch_processing.log). grid / tile_size / overlap / format / png_preset /
    world_files / self_check / follow_symlinks / check_output: as the `tessq run` flags of the same names.
    workspace: where `.tessq/` (status table and queue) lives (default: $TESSQ_WORKSPACE, else OUT/.tessq,
    so any process that sees OUT resumes the job). force_options: accept cut options that differ from the
    ones OUT was made with (finished images are then cut again; without it such a scan raises ConfigError).
    extra: free-form notes for the caller; tessq ignores it.
    """

    input_dir: str | Path
    output_dir: str | Path
    num_pieces: int = defaults.NUM_PIECES
    max_workers: int = defaults.API_WORKERS  # the seed's 4, not one per core: see defaults.API_WORKERS
    min_image_size: int = defaults.MIN_IMAGE_SIZE
    skip_existing: bool = True
    resume_mode: bool = True
    log_level: str = "INFO"
    grid: tuple[int, int] | None = None
    tile_size: int | None = None
    overlap: int = 0
    format: str = defaults.SLICE_FORMAT
    png_preset: str = defaults.PNG_PRESET
    world_files: bool = False
    self_check: str = defaults.SELF_CHECK
    follow_symlinks: bool = False
    check_output: str = "stat"
    workspace: str | Path | None = None
    force_options: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def slice_options(self) -> SliceOptions:
        """The cutting settings as the scan records them (the same object the CLI builds from its flags)."""
        return SliceOptions(
            num_pieces=self.num_pieces,
            grid=self.grid,
            tile_size=self.tile_size,
            overlap=self.overlap,
            min_size=self.min_image_size,
            format=self.format,
            png_preset=self.png_preset,
            world_files=self.world_files,
            self_check=self.self_check,
        )


class BatchTesselator:
    """Runs a BatchJob: scan, workers until drained, report (also written to OUT/batch_report.json).

    It holds its own workspace and binds it around each call (pipeline.bound), so two batches with
    different workspaces in one notebook never redirect each other's scan or report."""

    def __init__(self, job: BatchJob) -> None:
        self.job = job
        # bad locations and lost work are refused before anything is written; the console (stderr) logs at
        # log_level, as the seed did, and OUT/batch_processing.log as always
        self.workspace = pipeline.open_run(self.request())
        if self.workspace.legacy:
            from tessq.jobs.settings import legacy_message

            pipeline.log.warning("%s", legacy_message(self.workspace, _location(job.output_dir)))

    def request(self) -> pipeline.RunRequest:
        """The run this BatchJob asks for (read at each call: a caller may change `self.job` in between)."""
        job = self.job
        return pipeline.RunRequest(
            _location(job.input_dir),
            _location(job.output_dir),
            job.slice_options(),
            resume=job.skip_existing and job.resume_mode,
            follow_symlinks=job.follow_symlinks,
            check_output=job.check_output,
            force_options=job.force_options,
            n_workers=job.max_workers,
            workspace=job.workspace,
            log_level=job.log_level,
        )

    def scan(self) -> dict[str, Any]:
        """Record and queue the tree; returns the scan summary (found, queued, skipped, ...)."""
        with pipeline.bound(self.workspace):
            return pipeline.scan_run(self.request(), self.workspace).as_dict()

    def _job(self) -> db.Job | None:
        """This batch's row in the status table, found by its output folder (None before its first scan)."""
        with db.session():
            return db.Job.get_or_none(db.Job.output_dir == storage.text(_location(self.job.output_dir)))

    def process(
        self, on_progress: Callable[[dict[str, Any]], None] | None = None, poll_s: float = 1.0, progress: bool = False
    ) -> int:
        """Run `tessq workers --workers max_workers --drain` as a child process until nothing is left to do.

        on_progress, if given, is called about every `poll_s` seconds and once at the end with
        `tessq.jobs.status.snapshot()` (counts by state, progress finished/total, throughput, ETA, workers).
        progress=True also shows tessq's own progress display (tessq.progress: a bar in a terminal, a line
        redrawn in place in a notebook, a log line every 30 s elsewhere). The workers' console log (at
        log_level) is passed on to this process's stderr as it comes.
        Returns the child's exit status (0); raises RuntimeError with its last output if it fails.
        Ctrl-C (interrupting the notebook cell) stops the workers gracefully; run again to resume.
        """
        with pipeline.bound(self.workspace):
            return self._process_bound(on_progress, poll_s, progress)

    def _process_bound(
        self, on_progress: Callable[[dict[str, Any]], None] | None, poll_s: float, progress: bool
    ) -> int:
        from tessq.jobs import status
        from tessq.progress import BatchProgress

        row = self._job()
        job_id = row.id if row is not None else None
        shown = BatchProgress() if progress else None
        try:
            return self._process(on_progress, poll_s, shown, job_id)
        finally:
            if shown is not None:
                shown.close(status.snapshot(job_id))

    def _process(
        self,
        on_progress: Callable[[dict[str, Any]], None] | None,
        poll_s: float,
        shown: Callable[[dict[str, Any]], None] | None,
        job_id: int | None,
    ) -> int:
        from tessq.jobs import status

        callbacks = [f for f in (on_progress, shown) if f is not None]
        cmd = [
            sys.executable,
            "-m",
            "tessq",
            "--workspace",
            str(self.workspace.root),
            "--log-level",
            self.job.log_level,
            "workers",
            "--workers",
            str(self.job.max_workers),
            "--drain",
        ]
        env = dict(os.environ, TESSQ_DB_URL=self.workspace.db_url, TESSQ_QUEUE_URL=self.workspace.queue_url)
        # The child's console log goes to a file, not a pipe: a pipe nobody reads while polling fills up
        # (64 KiB: ~1,000 images at INFO, ~250 at DEBUG) and the workers then block writing to it for
        # ever. OUT/batch_processing.log has the full log as well.
        # O_APPEND: the child shares this file's offset, so its writes must land at the end whatever we read
        with tempfile.TemporaryFile(mode="a+b") as console_log:
            child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=console_log)
            relay = _LogRelay(console_log)
            try:
                while child.poll() is None:
                    relay.forward()
                    if callbacks:
                        snap = status.snapshot(job_id)
                        for f in callbacks:
                            f(snap)
                    time.sleep(poll_s)
            except BaseException:
                child.terminate()  # graceful: running images finish or go back to the queue
                child.wait()
                raise
            finally:
                relay.forward(final=True)
            if on_progress:
                on_progress(status.snapshot(job_id))
            if child.returncode != 0:
                console_log.seek(0)
                tail = console_log.read()[-4000:].decode("utf-8", "replace")
                raise RuntimeError(f"tessq workers exited with {child.returncode}: {tail}")
        return child.returncode

    def report(self) -> dict[str, Any]:
        """The report from the status table (what `tessq report --json` prints); also OUT/batch_report.json."""
        with pipeline.bound(self.workspace):
            return pipeline.finish_report(self._job())

    def run_batch(
        self, on_progress: Callable[[dict[str, Any]], None] | None = None, progress: bool = True
    ) -> dict[str, Any]:
        """Scan, process everything, and return the final report (the seed's batch_summary and more).

        progress=True (the default) shows the progress as it goes: a bar in a terminal, a line redrawn in place
        in a notebook, a log line every 30 s elsewhere; the console log (stderr, at log_level) says what
        each step and worker does. progress=False keeps only the log."""

        def drain(n_workers: int, job: db.Job) -> str:
            self.process(on_progress, progress=progress)  # raises if the workers failed or were interrupted
            return pipeline.DRAINED

        with pipeline.bound(self.workspace):
            outcome = pipeline.run_opened(self.request(), self.workspace, pipeline.RunHooks(drain=drain))
        return outcome.report


class _LogRelay:
    """Passes the worker child's console log (a temporary file) on to this process's stderr, whole lines as
    they are written, so a batch run from Python logs to the console like the CLI does."""

    def __init__(self, file: Any) -> None:
        self.file, self.pos = file, 0

    def forward(self, final: bool = False) -> None:
        try:
            self.file.seek(self.pos)
            data = self.file.read()
        except (OSError, ValueError):
            return
        if not final:
            data = data[: data.rfind(b"\n") + 1]
        if not data:
            return
        self.pos += len(data)
        try:
            sys.stderr.write(data.decode("utf-8", "replace"))
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
