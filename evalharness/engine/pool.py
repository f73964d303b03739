"""Many jobs on a pool of reused worker processes: one model load per worker, the slowest jobs first, a crash, a
stall or a CUDA error retires its worker and the job is retried once in a fresh one, and a status line every 30 s.

Each slot (a thread) owns at most one worker at a time, started from that thread (PR_SET_PDEATHSIG follows the
forking thread) and pinned to one GPU (--devices, round robin). A slot takes the next job by schedule.next_job: the
slowest pending job, preferring one its current worker can serve (same schedule.worker_key); a job with another key
retires the worker first. With `env` (--mps: mps.Daemon.worker_env) the workers' kernels share each GPU through an
MPS server. A GPU fault under MPS reaches every client of that GPU: one worker's illegal memory access fails its
neighbours' jobs too, some with a crash and some with the error caught in the engine. Every retry runs in a fresh
worker without MPS, in a CUDA context of its own, where its fault is its own. Every job keeps its own folder
(job.json, results.jsonl, meta.json, worker.log), so `collect`, the cache, `--resume` and `merge` see exactly what a
one-job worker leaves.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..results import RunResult, Sample
from ..schedule import Budget, critical_path_order, next_job, single_use, status_line, worker_key
from . import CUDA_FAULTS, Job, collect, prepare_dir
from .process import Worker

STATUS_EVERY_S = 30.0
RETRIED = ("crash", "timeout")
STOPPED = "stopped by --fail-fast: its cell's run and twin already differ"


def needs_retry(result: RunResult) -> bool:
    """A crash, a stall, or a CUDA error that the engine caught (CUDA_FAULTS): the job runs once more in a fresh
    worker. Caught or not, a GPU fault leaves the worker's CUDA context suspect (an illegal memory access is sticky),
    and under MPS it may be a neighbour's; a deterministic one fails again, a transient one does not."""
    return result.status in RETRIED or result.error_class in CUDA_FAULTS


@dataclass
class PoolReport:
    """What the pool did, for the summary and the report."""

    budget: Budget
    workers: list[dict] = field(default_factory=list)  # id, device, threads, load_s, jobs (run keys), end

    @property
    def model_loads(self) -> int:
        return sum(1 for w in self.workers if w["load_s"] is not None)

    def to_json(self) -> dict:
        return {"workers": self.budget.workers, "threads_per_worker": self.budget.threads, "why": self.budget.why,
                "model_loads": self.model_loads, "processes": self.workers}


class Pool:
    def __init__(self, jobs: list[Job], budget: Budget, devices: list[str] | None = None, progress: bool = True,
                 on_result: Callable[[Job, RunResult], None] | None = None, retries: int = 1,
                 status_every_s: float = STATUS_EVERY_S, stream=None, guard=None,
                 cached: Callable[[Job], RunResult | None] | None = None,
                 watch: Callable[[str, bool], set[str]] | None = None,
                 env: Callable[[str | None], dict] | None = None, idle: Callable[[], None] | None = None):
        self.pending = critical_path_order(jobs)
        self.budget, self.devices, self.progress, self.retries = budget, devices, progress, retries
        self.on_result = on_result or (lambda job, result: None)
        self.status_every_s, self.stream = status_every_s, stream or sys.stderr
        self.report = PoolReport(budget)
        self.results: dict[str, RunResult] = {}
        self.lock = threading.Lock()
        self.total_jobs = len(jobs)
        self.samples_total = sum(len(j.prompts) for j in jobs)
        self.samples_done: dict[str, int] = {}
        self.running: dict[str, Worker] = {}
        self.cancelled: set[str] = set()
        self.t0 = time.monotonic()
        # a job's folder is held (guard(job_dir): another invocation sharing the cache waits) while it runs, and
        # read again once held: that invocation may have finished it meanwhile
        self.guard = guard or (lambda folder: contextlib.nullcontext())
        self.cached = cached or (lambda job: None)
        # --fail-fast: watch(job key, finished) -> run keys to stop (failfast.FailFast.check)
        self.watch = watch
        self.env = env  # --mps: mps.Daemon.worker_env
        # called once, in this (the main) thread, while the workers run: the parent's own work that can wait for no
        # job (pipeline.import_for_reports); with one slot the main thread runs the jobs itself and it is not called
        self.idle = idle

    # --- the run ---------------------------------------------------------------------------------------------
    def run(self) -> dict[str, RunResult]:
        slots = min(self.budget.workers, len(self.pending))
        stop = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(stop,), daemon=True)
        ticker.start()
        try:
            if slots <= 1:
                self._slot(0)
            else:
                threads = [threading.Thread(target=self._slot, args=(i,), daemon=True) for i in range(slots)]
                for t in threads:
                    t.start()
                idle = self.idle
                for t in threads:
                    while t.is_alive():  # a join with a timeout lets Ctrl-C through
                        t.join(timeout=0.5)
                        if idle is not None and t.is_alive():
                            idle, work = None, idle
                            work()
        finally:
            stop.set()
            ticker.join(timeout=2)
        return self.results

    def cancel(self, keys: set[str]) -> None:
        """--fail-fast: drop these jobs if pending (a `stopped` result without samples); stop them if running
        (their partial results are kept)."""
        with self.lock:
            self.cancelled |= keys
            for job in [j for j in self.pending if j.key in keys]:
                self.results[job.key] = RunResult(key=job.key, status="stopped", samples=[
                    Sample(index=i, status="missing") for i in range(len(job.prompts))], error=STOPPED)
                self.samples_done[job.key] = len(job.prompts)
            self.pending = [j for j in self.pending if j.key not in keys]

    def _stop(self, keys: set[str]) -> None:
        new = keys - self.cancelled - set(self.results)
        if new:
            self.cancel(new)

    def _slot(self, i: int) -> None:
        device = self.devices[i % len(self.devices)] if self.devices else None
        worker: Worker | None = None
        try:
            while True:
                with self.lock:
                    if not self.pending:
                        return
                    current = worker.key if worker is not None and worker.alive else None
                    job = self.pending.pop(next_job(self.pending, current))
                job.cuda_device = device
                with self.guard(job.job_dir):
                    result = self.cached(job)
                    if result is None:
                        result, worker = self._run_job(job, worker, device)
                        self.on_result(job, result)
                with self.lock:
                    self.results[job.key] = result
                    self.samples_done[job.key] = len(job.prompts)
                if self.watch is not None:
                    self._stop(self.watch(job.key, True))
        finally:
            if worker is not None:
                self._retire(worker, "idle")

    def _run_job(self, job: Job, worker: Worker | None, device: str | None) -> tuple[RunResult, Worker | None]:
        from tqdm import tqdm

        key = worker_key(job)
        attempts = 0
        while True:
            attempts += 1
            if worker is not None and (not worker.alive or worker.key != key):
                self._retire(worker, "other patch set" if worker.alive else "died")
                worker = None
            prepare_dir(job)
            if worker is None:
                worker = self._start(key, job, device, retry=attempts > 1)
            bar = tqdm(total=len(job.prompts), desc=job.label or job.key, unit="req", disable=not self.progress,
                       leave=True, dynamic_ncols=True)

            def on_progress(done: int, total: int, bar=bar) -> None:
                bar.n = done
                bar.refresh()
                with self.lock:
                    self.samples_done[job.key] = done
                if self.watch is not None:
                    self._stop(self.watch(job.key, False))

            with self.lock:
                self.running[job.key] = worker
            try:
                outcome = worker.run(job.job_dir, job.limits(), on_progress,
                                     cancelled=lambda: job.key in self.cancelled)
            finally:
                bar.close()
                with self.lock:
                    self.running.pop(job.key, None)
            result = collect(job, outcome.returncode, outcome.stopped, outcome.wall_s)
            self._note_load(worker, result)
            worker.record["jobs"].append(job.key)
            retried = needs_retry(result)
            if retried or not worker.alive or single_use(job.engine):
                self._retire(worker, result.status if result.status != "ok" else "single use")
                worker = None
            if retried and attempts <= self.retries and job.key not in self.cancelled:
                with self.lock:
                    self.samples_done[job.key] = 0
                continue
            result.meta["attempts"] = attempts
            return result, worker

    def _start(self, key: tuple, job: Job, device: str | None, retry: bool = False) -> Worker:
        """A new worker for `key`; with --mps through the MPS daemon, except for a retry (see the module's doc)."""
        env = None if retry or not self.env else self.env(device)
        worker = Worker(key, job.python, job.pythonpath, device, self.budget.threads, job.job_dir / "worker.log",
                        env=env)
        worker.record = {"id": worker.id, "device": device, "threads": self.budget.threads, "load_s": None,
                         "jobs": [], "end": None, "mps": env is not None}
        with self.lock:
            self.report.workers.append(worker.record)
        return worker

    @staticmethod
    def _note_load(worker: Worker, result: RunResult) -> None:
        info = result.meta.get("worker") or {}
        if info and not info.get("reused_model") and worker.record["load_s"] is None:
            worker.record["load_s"] = result.meta.get("load_s")

    @staticmethod
    def _retire(worker: Worker, why: str) -> None:
        if worker.alive:
            worker.close() if why == "idle" else worker.kill()
        worker.record["end"] = why

    # --- the status line -------------------------------------------------------------------------------------
    def status(self) -> str:
        with self.lock:
            return status_line(len(self.results), self.total_jobs, sum(self.samples_done.values()),
                               self.samples_total, time.monotonic() - self.t0, len(self.running))

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(self.status_every_s):
            line = self.status()
            if self.progress:
                from tqdm import tqdm

                tqdm.write(line, file=self.stream)
            else:
                print(line, file=self.stream, flush=True)


def run_pool(jobs: list[Job], budget: Budget, devices: list[str] | None = None, progress: bool = True,
             on_result: Callable[[Job, RunResult], None] | None = None, guard=None,
             cached: Callable[[Job], RunResult | None] | None = None,
             watch: Callable[[str, bool], set[str]] | None = None,
             env: Callable[[str | None], dict] | None = None,
             idle: Callable[[], None] | None = None) -> tuple[dict[str, RunResult], PoolReport]:
    pool = Pool(jobs, budget, devices, progress, on_result, guard=guard, cached=cached, watch=watch, env=env,
                idle=idle)
    return pool.run(), pool.report
