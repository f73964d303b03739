"""The engine seam: `run_engine(job) -> RunResult`, each job in its own worker process.

Everything that touches torch, CUDA or transformers' CB engine happens in `worker.py`, in a child process: a CUDA
illegal memory access kills that process's CUDA context, and a segfault or abort kills the process, so one config
per process is the only way a crash loses no other result. This module starts the worker (process.py), draws its progress bar,
stops it when it stalls, and turns whatever the worker left behind (results.jsonl, meta.json, its log, its exit
status) into a `RunResult`.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import EngineConfig
from ..results import RunResult, Sample, atomic_write_json, read_jsonl
from .process import Limits, Worker, default_limits, worker_env

# error text -> error class, first match wins (checked against sample errors and the worker's log)
ERROR_CLASSES = (
    ("illegal memory access", "cuda_illegal_memory_access"),
    ("CUBLAS_STATUS", "cublas_failure"),
    ("out of memory", "oom"),
    ("stream is capturing", "cuda_graph_capture"),  # cudaErrorStreamCaptureUnsupported / ...Invalidated
    ("error during capture", "cuda_graph_capture"),
    # not "device-side assert": every CUDA error ends with "... to enable device-side assertions."
    ("device-side assert triggered", "cuda_device_assert"),
    ("CUDA error", "cuda_error"),
)

# the classes of a CUDA fault, retried like a crash (pool.needs_retry) also where the engine caught the error: the
# worker's CUDA context may be dead (an illegal memory access and a device assert are sticky), and under MPS a
# neighbour's fatal fault reaches every client of that GPU's server with one of them
CUDA_FAULTS = ("cuda_illegal_memory_access", "cuda_device_assert", "cuda_error")


def classify(text: str) -> str | None:
    for needle, name in ERROR_CLASSES:
        if needle.lower() in text.lower():
            return name
    return None


@dataclass
class Job:
    key: str
    engine: EngineConfig
    model: dict
    prompts: list[str]
    max_new_tokens: int
    job_dir: Path
    chat: bool = False
    timeout_s: float | None = None  # an explicit limit on the whole run (--timeout-s); None: none
    stall_s: float | None = None  # no finished request and no engine step for this long: hung (None: by device)
    python: str = field(default_factory=lambda: sys.executable)
    pythonpath: str | None = None  # folder put first on the worker's PYTHONPATH (another transformers build)
    cuda_device: str | None = None  # CUDA_VISIBLE_DEVICES for the worker
    label: str = ""

    def limits(self) -> Limits:
        base = default_limits(cuda=False, total_s=self.timeout_s)  # the CPU's stall limit: the longer one
        return base if self.stall_s is None else dataclasses.replace(base, stall_s=self.stall_s)

    def spec(self) -> dict:
        return {"engine": dataclasses.asdict(self.engine), "model": self.model, "prompts": self.prompts,
                "max_new_tokens": self.max_new_tokens, "chat": self.chat, "timeout_s": self.timeout_s}


def _tail(path: Path, n: int = 20) -> list[str]:
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    return [line[:400] for line in lines[-n:]]


def probe_engine(python: str = sys.executable, pythonpath: str | None = None, timeout_s: float = 300,
                 model: dict | None = None) -> dict:
    """Ask an engine's interpreter what its transformers build is and can express (a short-lived worker); given the
    model spec, also whether that build gives the model the decode fast path."""
    cmd = [python, "-m", "evalharness.engine.worker", "--probe", *([json.dumps(model)] if model is not None else [])]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env=worker_env(pythonpath), stdin=subprocess.DEVNULL, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    for line in proc.stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[6:])
    last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return {"error": last[:300]}


def run_engine(job: Job, progress: bool = True) -> RunResult:
    """Run one job in a fresh worker process and collect what it left behind. Never raises for engine failures.
    (pool.run_pool runs many jobs on reused workers.)"""
    from tqdm import tqdm

    prepare_dir(job)
    bar = tqdm(total=len(job.prompts), desc=job.label or job.key, unit="req", disable=not progress, leave=True,
               dynamic_ncols=True)

    def on_progress(done: int, total: int) -> None:
        bar.n = done
        bar.refresh()

    worker = Worker(None, job.python, job.pythonpath, job.cuda_device, None, job.job_dir / "worker.log")
    try:
        outcome = worker.run(job.job_dir, job.limits(), on_progress)
    finally:
        worker.close()
        bar.close()
    return collect(job, outcome.returncode, outcome.stopped, outcome.wall_s)


def prepare_dir(job: Job) -> None:
    """A clean job folder holding job.json and an empty worker.log, before a worker gets it."""
    job.job_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("results.jsonl", "meta.json", "audit.json"):
        (job.job_dir / stale).unlink(missing_ok=True)
    atomic_write_json(job.job_dir / "job.json", job.spec())
    (job.job_dir / "worker.log").write_text("")


def collect(job: Job, returncode: int | None, timed_out: bool | str | None, wall_s: float) -> RunResult:
    """What a worker left in the job folder -> RunResult. `timed_out`: why the parent stopped it ("stall": no
    progress for the stall limit; "total" or True: past --timeout-s), or None."""
    meta_path, results_path = job.job_dir / "meta.json", job.job_dir / "results.jsonl"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta["wall_s"] = wall_s
    audit_path = job.job_dir / "audit.json"
    if "audit" not in meta and audit_path.exists():  # the worker died after an audit finding: keep it
        meta["audit"] = json.loads(audit_path.read_text())
    constants_path = job.job_dir / "constants.json"
    if "stale_constants" not in meta and constants_path.exists():  # died after a stale-constant finding
        meta["stale_constants"] = json.loads(constants_path.read_text())
    by_index: dict[int, dict] = {}
    if results_path.exists():
        for row in read_jsonl(results_path):
            by_index[row["index"]] = row
    samples = []
    for i in range(len(job.prompts)):
        row = by_index.get(i)
        if row is None:
            samples.append(Sample(index=i, status="missing"))
        else:
            samples.append(Sample(index=i, status=row["status"], token_ids=row["token_ids"], text=row["text"],
                                  error=row.get("error")))
    tail = _tail(job.job_dir / "worker.log")
    failed_errors = " ".join(s.error or "" for s in samples if s.status == "failed")
    log_text = "\n".join(tail) + " " + failed_errors + " " + str(meta.get("error", ""))
    status, error_class, error = "ok", None, None
    if meta.get("status") == "unsupported":
        status, error = "unsupported", meta.get("reason")
    elif timed_out == "cancelled":
        status, error = "stopped", "stopped by --fail-fast: its cell's run and twin already differ"
    elif timed_out:
        if timed_out == "stall":
            why = f"no progress (no finished request, no engine step) for {job.limits().stall_s:.0f} s"
        else:
            why = f"no result after the {job.timeout_s or 0:.0f} s timeout"
        status, error_class, error = "timeout", "hang", why
    elif meta.get("status") == "error":
        status, error = "error", meta.get("error")
        error_class = classify(log_text) or f"{meta.get('phase', 'worker')}_error"
    elif returncode != 0 or meta.get("status") != "done":
        status = "crash"
        if returncode is not None and returncode < 0:
            name = signal.Signals(-returncode).name
            error_class, error = classify(log_text) or name.lower(), f"worker killed by {name}"
        else:
            error_class, error = classify(log_text) or "worker_exit", f"worker exited with status {returncode}"
    elif any(s.status != "ok" for s in samples):
        status = "failed_requests"
        error_class = classify(log_text) or "failed_requests"
        first = next(s for s in samples if s.status != "ok")
        error = first.error or f"request {first.index} {first.status}"
    if meta.get("error") and status == "failed_requests":
        error = meta["error"]
    return RunResult(key=job.key, status=status, samples=samples, error_class=error_class,
                     error=error, log_tail=tail if status != "ok" else [], meta=meta)
