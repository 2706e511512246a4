"""`tessq demo`: build the sample tree, then run it (pipeline.run, the flow of `tessq run`) and verify it.

Uses exactly the code paths of `tessq run` on the embedded SQLite workspace of its output, DIR/output/.tessq.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from tessq import defaults, pipeline, samples
from tessq.jobs.scan import ScanSummary
from tessq.options import SliceOptions


def run_demo(directory: Path, n_workers: int, console: Console) -> int:
    root = directory.resolve()
    input_dir, output_dir = root / "input", root / "output"
    started = time.monotonic()
    console.print(f"[bold]tessq demo[/bold]: writing a sample tree to {input_dir}")
    expected = samples.make_sample_tree(input_dir)
    for key in ("TESSQ_WORKSPACE", "TESSQ_DB_URL", "TESSQ_QUEUE_URL"):  # always the embedded default: OUT/.tessq
        os.environ.pop(key, None)

    def scanned(summary: ScanSummary) -> None:
        console.print(
            f"scan: {summary.found} TIFFs, {summary.queued} queued, skipped {summary.skipped}, "
            f"unreadable {len(summary.failed_at_scan)}, folders skipped {summary.folders_skipped}"
        )

    request = pipeline.RunRequest(
        input_dir, output_dir, SliceOptions(), n_workers=n_workers, log_level="WARNING", command="demo"
    )
    outcome = pipeline.run(request, pipeline.RunHooks(on_scan=scanned))
    if outcome.stopped_by != pipeline.DRAINED:  # Ctrl-C/SIGTERM: `tessq demo` exits 130 as `tessq run` does
        raise KeyboardInterrupt
    verification = pipeline.verify_done()
    report = pipeline.finish_report()
    console.print_json(json.dumps(report["batch_summary"]))
    for error in report["errors"]:
        console.print(f"[yellow]expected failure[/yellow] {error['type']}: {error['message']}")
    console.print(f"verify: {verification['identical']}/{verification['checked']} images reassemble bit for bit")
    console.print(
        f"output: {output_dir}\nreport: {output_dir / defaults.REPORT_FILENAME}\n"
        f"state: {outcome.workspace.state_dir} (try: tessq status {output_dir} --once)"
    )
    console.print(f"finished in {time.monotonic() - started:.1f} s")
    return 0 if _as_expected(report["batch_summary"], verification, expected) else _differs(console)


def _as_expected(got: dict[str, Any], verification: dict[str, Any], expected: dict[str, Any]) -> bool:
    """Whether the run gave what the sample tree is built to give (done, failed, skipped, all identical)."""
    return (
        got["successfully_processed"] == expected["done"]
        and got["errors"] == expected["errors"]
        and got["skipped"] == expected["skipped"]
        and verification["identical"] == expected["done"]
    )


def _differs(console: Console) -> int:
    console.print("[red]demo outcome differs from what the sample tree should give[/red]")
    return 1
