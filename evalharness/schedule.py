"""Which job runs when and in which worker, and how many workers fit: the pure decisions of the worker pool
(engine/pool.py carries them out; sizing.py reads the numbers from the model files and the machine).

- Critical path first: a verdict's wall time is at least its slowest run, so the slowest runs start first.
  Measured on the H200 (Gemma 3 270M, 300 GSM8K prompts): padded-eager twin 238-322 s, eager `off` 173 s, varlen
  graphs 87 s. `job_cost` ranks runs by that shape.
- Reuse: a worker keeps its model loaded and serves every job with the same worker key: the same engine interpreter
  and PYTHONPATH, model spec, attention backend and process-wide patch set (fault patches of transformers' classes,
  audit hooks, compile level). Padding is *not* part of the key: the padded-eager twin's patch is installed once
  per worker and switched per job (patches.set_padding), read when the engine builds its batch processor inside
  `generate_batch`; a worker runs one job at a time, so a twin and a plain run never overlap in one process.
- Budget: workers = min(jobs, GPU memory / per-worker need, CPU cores / threads per worker), and each worker gets
  cores // workers threads (torch intra-op, OpenMP, MKL), so that workers never oversubscribe the cores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

from .config import EngineConfig

GIB = 2**30
# A worker with graphs or eager kernels on a GPU is bound by host-side work per step: one thread runs Python and the
# engine's loop, one more serves tokenization, output handling and the CUDA driver.
THREADS_PER_GPU_WORKER = 2
# On a CPU the forward pass itself uses the threads: fewer, wider workers.
THREADS_PER_CPU_WORKER = 2
MAX_WORKERS_PER_GPU = 8  # past this, workers time-slice one GPU for little gain


def job_cost(engine: EngineConfig) -> float:
    """Relative run time: padded-eager twin 3, eager (graphs off) 2, graph runs 1; an audit re-runs every replay
    eagerly (x2)."""
    if any(engine.cuda_graph):
        cost = 1.0
    else:
        cost = 3.0 if engine.force_padding else 2.0
    return cost * (2.0 if engine.audit else 1.0)


def critical_path_order(jobs: Sequence) -> list:
    """Jobs (anything with `.engine`), slowest first; ties keep their planned order."""
    return sorted(jobs, key=lambda j: -job_cost(j.engine))


def patch_key(engine: dict) -> str:
    """The process-wide patches a job needs (the worker checks it too): fault, audit, compile level, attention."""
    return json.dumps({k: engine.get(k) for k in ("attn", "fault", "audit", "compile_level")}, sort_keys=True)


def worker_key(job) -> tuple:
    """Jobs with equal keys may share one worker (and its loaded model)."""
    import dataclasses

    return (job.python, job.pythonpath or "", json.dumps(job.model, sort_keys=True),
            patch_key(dataclasses.asdict(job.engine)))


def single_use(engine: EngineConfig) -> bool:
    """Jobs whose worker must not serve another: the audit's hooks hold this job's auditor; abort and hang kill or
    stall their worker on purpose."""
    return bool(engine.audit) or engine.fault in ("abort", "hang")


def next_job(pending: Sequence, current_key: tuple | None) -> int:
    """Index of the job a slot runs next: among the pending jobs of the highest cost (pending is in critical-path
    order), one its current worker can serve, else the first."""
    if not pending:
        raise ValueError("no pending job")
    top = job_cost(pending[0].engine)
    for i, job in enumerate(pending):
        if job_cost(job.engine) < top:
            break
        if current_key is not None and worker_key(job) == current_key:
            return i
    return 0


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int, block_size: int, blocks: int) -> int:
    """The paged KV cache a worker allocates: K and V for every layer, head and slot of every block."""
    return layers * kv_heads * head_dim * 2 * dtype_bytes * block_size * blocks


def worker_bytes(n_params: int, dtype_bytes: int, kv_bytes: int, max_bt: int, vocab: int) -> int:
    """GPU memory one worker needs: weights, its KV cache, the logits of one batch (fp32, a few copies) and the
    CUDA context and allocator slack (1.5 GiB), with 20 % on top."""
    logits = max_bt * vocab * 4 * 3
    return int((n_params * dtype_bytes + kv_bytes + logits) * 1.2 + 1.5 * GIB)


@dataclass(frozen=True)
class Budget:
    workers: int
    threads: int  # CPU threads per worker
    why: str  # what bounded the worker count, for the one-line report

    def line(self) -> str:
        return f"evalharness: {self.workers} worker(s) x {self.threads} thread(s) ({self.why})"


def threads_for(workers: int, cores: int) -> int:
    return max(1, cores // max(1, workers))


def auto_budget(n_jobs: int, cores: int, cuda: bool, devices: int = 1, free_bytes: Sequence[int] | None = None,
                need_bytes: int | None = None, other_workers: int = 0) -> Budget:
    """`--jobs auto`: as many workers as the jobs, the GPUs' free memory and the cores allow; `other_workers` (of other
    invocations on this machine) take their share of the cores first."""
    n_jobs = max(1, n_jobs)
    per = THREADS_PER_GPU_WORKER if cuda else THREADS_PER_CPU_WORKER
    by_cpu = max(1, cores // per - other_workers)
    parts = [f"{n_jobs} job(s)", f"{cores} cores / {per} threads = {cores // per}"]
    if other_workers:
        parts[-1] += f", {other_workers} held by other invocations"
    workers = min(n_jobs, by_cpu)
    if cuda:
        if free_bytes and need_bytes:
            by_mem = sum(max(0, f // need_bytes) for f in free_bytes)
            parts.append(f"{sum(free_bytes) / GIB:.0f} GiB free / {need_bytes / GIB:.1f} GiB per worker = {by_mem}")
            workers = min(workers, max(1, by_mem))
        cap = MAX_WORKERS_PER_GPU * max(1, devices)
        parts.append(f"at most {cap}")
        workers = min(workers, cap)
    return Budget(workers, threads_for(workers + other_workers, cores), "; ".join(parts))


def fixed_budget(workers: int, cores: int, other_workers: int = 0) -> Budget:
    """`--jobs N`: N workers, the cores split between them and other invocations' workers."""
    why = f"--jobs {workers}, {cores} cores" + (f", {other_workers} workers of other invocations" if other_workers
                                                 else "")
    return Budget(workers, threads_for(workers + other_workers, cores), why)


def estimate_left(elapsed_s: float, done: int, total: int) -> float | None:
    """Seconds left at the rate so far (None before the first sample)."""
    if done <= 0 or total <= 0:
        return None
    return elapsed_s * max(0, total - done) / done


def status_line(jobs_done: int, jobs_total: int, samples_done: int, samples_total: int, elapsed_s: float,
                running: int = 0) -> str:
    left = estimate_left(elapsed_s, samples_done, samples_total)
    est = f"~{_hms(left)} left" if left is not None else "estimate after the first sample"
    return (f"evalharness: status: jobs {jobs_done}/{jobs_total} done ({running} running), samples "
            f"{samples_done}/{samples_total}, elapsed {_hms(elapsed_s)}, {est}")


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
