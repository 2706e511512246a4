"""The seed's batch module, kept so its code runs unchanged after `pip install tessq`.

    from batch_tesselate import BatchTesselator, BatchJob
    report = BatchTesselator(BatchJob(input_dir=..., output_dir=...)).run_batch()

and its command line, `python -m batch_tesselate IN OUT --num-pieces 8 --max-workers 4 --min-size 1024
--resume` (or `python batch_tesselate.py ...` beside this file), which is `tessq run` with the same flags.
"""

from __future__ import annotations

import sys

from tessq.api import BatchJob, BatchTesselator

__all__ = ["BatchJob", "BatchTesselator", "main"]


def main(argv: list[str] | None = None) -> None:
    """`tessq run` with the seed's arguments (input, output, --num-pieces, --max-workers, --min-size, --resume)."""
    sys.argv = ["tessq", "run", *(sys.argv[1:] if argv is None else argv)]
    from tessq.entry import main as tessq_main

    tessq_main()


if __name__ == "__main__":
    main()
