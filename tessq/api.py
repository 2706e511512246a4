"""The seed's Python API: BatchJob (the settings) and BatchTesselator (runs the batch, returns the report).

It drives the same queue, workers and status table as the CLI: the scan runs in this process, the
workers run as a `tessq workers --drain` child process (safe inside Jupyter, which must not fork).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tessq import defaults, pipeline
from tessq.options import SliceOptions


@dataclass
class BatchJob:
    """What to cut and how; the seed's parameters first, tessq's extras after them.

    skip_existing / resume_mode: keep work already done (both True by default); setting either to
    False redoes every image. workspace: where `.tessq/` lives (default: TESSQ_WORKSPACE or the cwd).
    """

    input_dir: str | Path
    output_dir: str | Path
    num_pieces: int = defaults.NUM_PIECES
    max_workers: int = 4
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
    follow_symlinks: bool = False
    workspace: str | Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def slice_options(self) -> SliceOptions:
        return SliceOptions(
            num_pieces=self.num_pieces,
            grid=self.grid,
            tile_size=self.tile_size,
            overlap=self.overlap,
            min_size=self.min_image_size,
            format=self.format,
            png_preset=self.png_preset,
            world_files=self.world_files,
        )


class BatchTesselator:
    """Runs a BatchJob: scan, workers until drained, report (also written to OUT/batch_report.json)."""

    def __init__(self, job: BatchJob) -> None:
        self.job = job
        self.workspace = pipeline.open_workspace(job.workspace)
        pipeline.start_logging(job.log_level, Path(job.output_dir).resolve(), console=False)

    def scan(self) -> dict[str, Any]:
        """Record and queue the tree; returns the scan summary (found, queued, skipped, ...)."""
        job = self.job
        if not (job.skip_existing and job.resume_mode):
            pipeline.forget_job(Path(job.input_dir))
        summary = pipeline.scan_and_enqueue(
            Path(job.input_dir),
            Path(job.output_dir),
            job.slice_options(),
            follow_symlinks=job.follow_symlinks,
            workspace=self.workspace,
        )
        return summary.as_dict()

    def process(self, on_progress: Callable[[dict[str, Any]], None] | None = None, poll_s: float = 1.0) -> int:
        """Run `tessq workers --drain` as a child process; call on_progress with status snapshots."""
        from tessq import status

        cmd = [
            sys.executable,
            "-m",
            "tessq",
            "--workspace",
            str(self.workspace.root),
            "--log-level",
            self.job.log_level,
            "workers",
            "--n",
            str(self.job.max_workers),
            "--drain",
        ]
        env = dict(os.environ, TESSQ_DB_URL=self.workspace.db_url, TESSQ_QUEUE_URL=self.workspace.queue_url)
        child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            while child.poll() is None:
                if on_progress:
                    on_progress(status.snapshot())
                time.sleep(poll_s)
        except KeyboardInterrupt:
            child.terminate()  # graceful: running images finish or go back to the queue
            child.wait()
            raise
        if on_progress:
            on_progress(status.snapshot())
        if child.returncode != 0:
            raise RuntimeError(
                f"tessq workers exited with {child.returncode}: {child.stderr.read() if child.stderr else ''}"
            )
        return child.returncode

    def report(self) -> dict[str, Any]:
        return pipeline.finish_report()

    def run_batch(self, on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Scan, process everything, and return the final report (the seed's batch_summary and more)."""
        self.scan()
        self.process(on_progress)
        return self.report()
