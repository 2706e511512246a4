"""`tessq verify` in parallel: a pool of forked processes, one image folder per job, checked against its
source by verify.verify_image; the parent records each verdict in the status table as results come in.

Each job reads its source once (grid row by grid row) and its slices once; the parent holds no pixels.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from tessq import defaults, storage
from tessq.cut import verify
from tessq.malloc import keep_freed_memory

MAX_PROBLEMS = 20  # per image in the summary (the full list stays in the worker's result)


@dataclass(frozen=True)
class VerifyJob:
    image_id: int
    input_dir: str
    output_dir: str
    rel_path: str
    out_rel: str


def verify_one(job: VerifyJob) -> dict[str, Any]:
    """One image folder against its source: {'image_id', 'file', 'identical', 'problems', 'error', ...}."""
    out: dict[str, Any] = {
        "image_id": job.image_id,
        "file": job.rel_path,
        "identical": False,
        "problems": [],
        "error": None,
    }
    try:
        with storage.verifiable(job.input_dir, job.output_dir, job.rel_path, job.out_rel) as found:
            outcome = verify.verify_image(*found)
    except Exception as exc:  # a missing or damaged output folder is a verification failure
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["problems"] = [{"file": None, "kind": "folder", "detail": out["error"]}]
        return out
    out["identical"] = bool(outcome["overall_identical"])
    out["compared_with"] = outcome["compared_with"]
    out["slices_checked"], out["slices_total"] = outcome["slices_checked"], outcome["slices_total"]
    out["pixels_different"] = outcome["pixels_different"]
    problems = list(outcome.get("problems", []))
    if not outcome["coverage_ok"]:
        problems.append({"file": None, "kind": "coverage", "detail": "the slices do not cover the whole image"})
    if not out["identical"] and not problems:
        problems.append({"file": None, "kind": "other", "detail": "; ".join(outcome["errors"]) or "not identical"})
    out["problems"] = problems[:MAX_PROBLEMS]
    out["problems_total"] = len(problems)
    return out


def _context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def run(jobs: Iterable[VerifyJob], workers: int | None = None) -> Iterator[dict[str, Any]]:
    """Results in completion order. workers=1 (or one job) runs inline, without a pool.

    The caller must not hold an open database connection across this call's fork (pipeline closes it)."""
    jobs = list(jobs)
    workers = max(1, min(workers or defaults.usable_cores(), len(jobs) or 1))
    if workers == 1:
        for job in jobs:
            yield verify_one(job)
        return
    # each process decodes with one codec thread: the pool already gives every core an image
    old = os.environ.get("TESSQ_THREADS")
    os.environ["TESSQ_THREADS"] = "1"
    try:
        with ProcessPoolExecutor(workers, mp_context=_context(), initializer=keep_freed_memory) as pool:
            pending: set[Future[dict[str, Any]]] = set()
            queue = iter(jobs)
            for job in queue:  # a bounded number in flight: results stream back while the rest wait
                pending.add(pool.submit(verify_one, job))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending.add(pool.submit(verify_one, nxt))
    finally:
        if old is None:
            os.environ.pop("TESSQ_THREADS", None)
        else:
            os.environ["TESSQ_THREADS"] = old


def summarize(
    results: Iterable[dict[str, Any]],
    record: Callable[[int, bool], None],
    progress: Callable[[int, int, str], None] | None,
    total: int,
) -> dict[str, Any]:
    """Record every verdict (parent side) and build verify_done's result."""
    out: dict[str, Any] = {"checked": 0, "identical": 0, "different": [], "errors": [], "details": []}
    for i, res in enumerate(results, 1):
        record(res["image_id"], res["identical"])
        out["checked"] += 1
        if res["identical"]:
            out["identical"] += 1
        else:
            out["different"].append(res["file"])
            out["details"].append(
                {
                    "file": res["file"],
                    "problems": res["problems"],
                    "problems_total": res.get("problems_total", len(res["problems"])),
                }
            )
        if res["error"]:
            out["errors"].append({"file": res["file"], "message": res["error"]})
        if progress:
            progress(i, total, res["file"])
    out["different"].sort()
    out["details"].sort(key=lambda d: d["file"])
    return out
