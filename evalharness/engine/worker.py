"""The worker process: `python -m evalharness.engine.worker JOB_DIR` runs one engine job (run_job.py) in its own
process.

`python -m evalharness.engine.worker --serve` is a reused worker: job folders arrive on stdin, one per line; the model
stays loaded between jobs, stderr is pointed at each job's worker.log, and `DONE rc` follows each job.
`--probe [MODEL_JSON]` prints what this interpreter's transformers can express (transformers_cb.probe; with the model
spec, whether that model can have the decode fast path) as one `PROBE {json}` line.
Logs go to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from .run_job import WorkerState, emit, run
from .transformers_cb import probe


def _log_to(path: Path) -> None:
    """Point this process's stderr (fd 2: Python logging, and what CUDA or a crash prints) at one job's log."""
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)


def serve() -> int:
    """`--serve`: run the jobs whose folders arrive on stdin, one per line, in this process (the model stays loaded);
    `DONE rc` on stdout after each. A job that fails (rc != 0) ends the worker: the pool starts a fresh one."""
    state = WorkerState()
    for line in sys.stdin:
        if not line.strip():
            continue
        job_dir = Path(line.strip())
        _log_to(job_dir / "worker.log")
        rc = run(job_dir, state)
        emit(f"DONE {rc}")
        if rc != 0:
            return rc
    return 0


def _thread_budget() -> None:
    """EVALHARNESS_THREADS (set by the pool next to OMP/MKL_NUM_THREADS): torch's intra-op threads for this worker,
    so that the workers of one machine never oversubscribe its cores."""
    n = os.environ.get("EVALHARNESS_THREADS")
    if n:
        import torch

        torch.set_num_threads(max(1, int(n)))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--probe":
        print("PROBE " + json.dumps(probe(json.loads(argv[1]) if len(argv) > 1 else None)), flush=True)
        return 0
    logging.basicConfig(level=os.environ.get("EVALHARNESS_WORKER_LOG", "WARNING"), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _thread_budget()
    if argv and argv[0] == "--serve":
        return serve()
    return run(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
