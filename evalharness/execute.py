"""Execute: run the jobs not already cached, on a pool of reused worker processes (engine/pool.py) or, given an
`engine`, one by one through it in this process (the fake engine of the tests); each finished result is cached in
its job folder (result.json) and a crash or stall is kept as failed.json, which the next run retries. Also what the
plan stage asks of this machine before any job runs: CUDA, and each engine's interpreter and probe.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Protocol

from .config import UsageError
from .engine import Job
from .results import RunResult, atomic_write_json


class Engine(Protocol):
    """The engine seam: one job spec in (prompts, model, engine configuration, limits), its RunResult out.
    `engine.run_engine` runs one job in a worker process through transformers' CB engine (run_jobs runs many on the
    worker pool instead); `fake_engine.FakeEngine` makes deterministic token streams in-process."""

    def __call__(self, job: Job, progress: bool = True) -> RunResult: ...


def detect_cuda() -> bool:
    import torch  # only to ask; the parent never allocates on the GPU

    return torch.cuda.is_available()


def engine_interpreter(engine: str | None) -> tuple[str, str | None]:
    """--engine PATH: a python interpreter, a virtual environment, or a folder holding another transformers build
    (put first on the workers' PYTHONPATH). Returns (python, extra PYTHONPATH)."""
    import sys

    if not engine:
        return sys.executable, None
    import shutil

    path = Path(engine).expanduser()
    if path.is_file():
        return str(path), None
    if "/" not in engine and shutil.which(engine):  # a command on PATH, e.g. python3
        return shutil.which(engine), None
    if (path / "bin" / "python").exists():
        return str(path / "bin" / "python"), None
    if path.is_dir():
        if not (path / "transformers").is_dir():
            raise UsageError(f"--engine {engine}: folder holds no transformers package (pip install --target it)")
        return sys.executable, str(path.resolve())
    raise UsageError(f"--engine {engine}: not an interpreter, a virtual environment or a folder")


def probe_engines(engines: dict[str, str | None], interpreters: dict[str, tuple[str, str | None]],
                  model: dict | None = None) -> dict:
    """Versions and abilities of each engine's transformers (given the model spec, also whether that build gives the
    model the decode fast path); the default one is read in this process."""
    from .engine import probe_engine
    from .engine.transformers_cb import probe

    out = {}
    for name, path in engines.items():
        out[name] = probe(model) if path is None else probe_engine(*interpreters[name], model=model)
        if "error" in out[name]:
            raise UsageError(f"--engine {name}={path}: its transformers does not load ({out[name]['error']})")
    return out


# Run statuses whose result is final and cached (result.json); the others are kept as failed.json and retried.
CACHED_STATUSES = ("ok", "failed_requests", "unsupported")


def lost_outside_engine(result: RunResult) -> bool:
    """Samples missing from a run whose worker finished without an engine error: its results.jsonl was cut short by
    something else (a deleted or truncated file), so the result says nothing about the engine and is not cached."""
    return (result.status == "failed_requests" and not result.meta.get("error")
            and any(smp.status == "missing" for smp in result.samples))


def cached_result(job: Job) -> RunResult | None:
    cached = job.job_dir / "result.json"
    if not cached.exists():
        return None
    try:
        return RunResult.from_json(json.loads(cached.read_text()))
    except (OSError, ValueError, KeyError, TypeError):  # a damaged cache entry is no result: run the job again
        cached.unlink(missing_ok=True)
        return None


def store_result(job: Job, result: RunResult) -> None:
    """Cache a final result (result.json); crashes, timeouts, worker errors and samples lost outside the engine are
    kept as failed.json instead, which the next run of the same folder retries and `evalharness merge` reads as this
    job's outcome."""
    if result.status in CACHED_STATUSES and not lost_outside_engine(result):
        atomic_write_json(job.job_dir / "result.json", result.to_json())
        (job.job_dir / "failed.json").unlink(missing_ok=True)
    else:
        atomic_write_json(job.job_dir / "failed.json", result.to_json())


def run_job_cached(job: Job, progress: bool = True, retries: int = 1) -> RunResult:
    """Run one job unless its folder already holds a finished result; a crashed or stalled worker is retried once in
    a fresh one. The job folder is locked while the job runs: another invocation sharing the cache waits, then reads
    the result, and never deletes files a live worker is writing."""
    return run_jobs([job], workers=1, progress=progress)[job.key]


def budget_for(jobs: list[Job], workers: int | str | None, devices: list[str] | None, cuda: bool):
    """--jobs N, or auto (the default on CUDA): the worker count and each worker's CPU threads (schedule.py), net of
    what other invocations on this machine hold. Returns (budget, GPU bytes per worker or None)."""
    from . import schedule, sizing

    cores = sizing.cpu_cores()
    other_workers, other_gpu = sizing.others()
    need = None
    if cuda:
        first = jobs[0]
        need = sizing.per_worker_bytes(first.model, first.prompts, first.max_new_tokens,
                                       max(j.engine.max_bt for j in jobs))
    if workers == "auto" or (not workers and cuda):
        free = None
        mem = sizing.gpu_memory(devices) if cuda else None
        if mem:  # what nvidia-smi sees free, less what other invocations claimed and have not allocated yet
            share = other_gpu // len(mem)
            free = [max(0, min(f, t - share)) for f, t in mem]
        return schedule.auto_budget(len(jobs), cores, cuda, len(devices or [None]), free, need, other_workers), need
    n = worker_count(workers or 0, devices)
    return schedule.fixed_budget(n, cores, other_workers), need


def worker_count(jobs: int | None, devices: list[str] | None) -> int:
    """--jobs, or by default one worker per --devices entry (one worker without devices)."""
    return max(1, jobs or (len(devices) if devices else 1))


def run_one(job: Job, engine: Engine, progress: bool = True, retries: int = 1) -> RunResult:
    """One job through `engine` in this process, under its folder's lock: the cached result if there is one, else
    the engine's (a crash, stall or CUDA error retried `retries` times, as the pool does), stored as the pool's are."""
    from .engine.pool import needs_retry
    from .locking import locked

    with locked(job.job_dir):
        cached = cached_result(job)
        if cached is not None:
            return cached
        result, attempts = engine(job, progress=progress), 1
        while needs_retry(result) and attempts <= retries:
            result, attempts = engine(job, progress=progress), attempts + 1
        result.meta["attempts"] = attempts
        store_result(job, result)
        return result


def run_jobs(jobs: list[Job], workers: int | str | None = 1, devices: list[str] | None = None, progress: bool = True,
             cuda: bool = False, report: dict | None = None, watch=None,
             engine: Engine | None = None, env=None, idle=None) -> dict[str, RunResult]:
    """Run the jobs not already cached on a pool of reused workers (engine/pool.py); with `devices`, every worker
    gets one GPU (CUDA_VISIBLE_DEVICES), round robin, so several workers may share a large GPU. Prints the chosen
    worker count and thread budget in one line; `report` receives the pool's account (workers, model loads);
    `watch` (--fail-fast, failfast.FailFast.check) names the runs to stop as results come in; `env(shared)`
    (mps.Daemons) is called once there are jobs for the pool and the worker count is known, `shared` saying whether
    several workers share a GPU, and gives what adds to each worker's environment (`worker_env(device)`) or None (so
    a run whose jobs are all cached starts no MPS daemon); `idle()`: the parent's own work, done once in this thread
    while the workers run (pool.Pool.idle). Given an `engine`, each job runs through it instead, one at a time in this
    process (run_one)."""
    import sys

    from .engine.pool import run_pool

    results = {job.key: r for job in jobs if (r := cached_result(job)) is not None}
    todo = [job for job in jobs if job.key not in results]
    if todo and engine is not None:
        results.update({job.key: run_one(job, engine, progress) for job in todo})
    elif todo:
        from .locking import locked
        from .sizing import Claim, claiming

        with contextlib.ExitStack() as held:
            with claiming():  # others' claims -> budget -> our claim, one invocation at a time
                budget, need = budget_for(todo, workers, devices, cuda)
                held.enter_context(Claim(budget.workers, budget.workers * (need or 0)))
            print(budget.line(), file=sys.stderr, flush=True)
            shared = cuda and min(budget.workers, len(todo)) > len(set(devices or [None]))
            worker_env = env(shared) if env is not None else None
            got, pool = run_pool(todo, budget, devices, progress, on_result=store_result, guard=locked,
                                 cached=cached_result, watch=watch, env=worker_env, idle=idle)
        results.update(got)
        if report is not None:
            report.update(pool.to_json())
    return {job.key: results[job.key] for job in jobs}
