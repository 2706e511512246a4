"""`tessq demo`: build the sample tree, then scan, run, report and verify it, end to end.

Uses exactly the code paths of `tessq run` on the embedded SQLite workspace of its output, DIR/output/.tessq.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rich.console import Console

from tessq import daemon, defaults, pipeline, samples
from tessq.options import SliceOptions


def run_demo(directory: Path, n_workers: int, console: Console) -> int:
    root = directory.resolve()
    input_dir, output_dir = root / "input", root / "output"
    started = time.monotonic()
    console.print(f"[bold]tessq demo[/bold]: writing a sample tree to {input_dir}")
    expected = samples.make_sample_tree(input_dir)
    for key in ("TESSQ_WORKSPACE", "TESSQ_DB_URL", "TESSQ_QUEUE_URL"):  # always the embedded default: OUT/.tessq
        os.environ.pop(key, None)
    ws = pipeline.open_workspace(output_dir=output_dir)
    pipeline.start_logging("WARNING", output_dir)
    summary = pipeline.scan_and_enqueue(input_dir, output_dir, SliceOptions(), workspace=ws)
    console.print(f"scan: {summary.found} TIFFs, {summary.queued} queued, skipped {summary.skipped}, "
                  f"unreadable {len(summary.failed_at_scan)}, folders skipped {summary.folders_skipped}")
    daemon.run_workers(n_workers, drain=True)
    report = pipeline.finish_report()
    verification = pipeline.verify_done()
    report = pipeline.finish_report()
    console.print_json(json.dumps(report["batch_summary"]))
    for error in report["errors"]:
        console.print(f"[yellow]expected failure[/yellow] {error['type']}: {error['message']}")
    console.print(f"verify: {verification['identical']}/{verification['checked']} images reassemble bit for bit")
    console.print(f"output: {output_dir}\nreport: {output_dir / defaults.REPORT_FILENAME}\n"
                  f"state: {ws.state_dir} (try: tessq status {output_dir} --once)")
    console.print(f"finished in {time.monotonic() - started:.1f} s")
    got = report["batch_summary"]
    ok = (got["successfully_processed"] == expected["done"] and got["errors"] == expected["errors"]
          and got["skipped"] == expected["skipped"] and verification["identical"] == expected["done"])
    if not ok:
        console.print("[red]demo outcome differs from what the sample tree should give[/red]")
    return 0 if ok else 1
