"""A worker process seen from the parent: start it (environment, thread budget, death with the parent), hand it job
folders, read its protocol lines, and stop it when a job makes no progress.

The worker (`python -m evalharness.engine.worker --serve`) prints `PHASE load|generate`, `PROGRESS done total` per
finished request, `BEAT` every few seconds while the engine steps, and `DONE rc` after each job. The hang signal is
silence: no line for `stall_s` seconds while generating (`load_stall_s` while importing and loading the model), not
the total time, so workers that share a busy GPU are never killed for being slow; `total_s` is an explicit limit on
top (`--timeout-s`).
"""

from __future__ import annotations

import functools
import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Limits:
    stall_s: float = 300.0  # no finished request and no engine step for this long: hung
    load_stall_s: float = 1800.0  # the same while importing torch and loading (or dequantizing) the model
    total_s: float | None = None  # an explicit limit on the whole job (--timeout-s)


def default_limits(cuda: bool, total_s: float | None = None) -> Limits:
    """An engine step takes well under a second on a GPU and seconds on a CPU; capturing a CUDA graph or compiling a
    kernel takes tens of seconds: five minutes of silence (ten on a CPU) is a hang, never a slow healthy run."""
    return Limits(stall_s=300.0 if cuda else 600.0, load_stall_s=1800.0, total_s=total_s)


def worker_env(extra_path: str | None = None, cuda_device: str | None = None, threads: int | None = None,
               extra: dict | None = None) -> dict:
    """The worker's environment: this one, its GPU, PYTHONPATH, its CPU budget, and `extra` last (--mps:
    mps.Daemon.worker_env; a None value unsets the variable)."""
    env = dict(os.environ)
    if cuda_device is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_device
    src = str(Path(__file__).resolve().parents[2])  # so an engine interpreter without the package finds it
    paths = [p for p in (extra_path, src, env.get("PYTHONPATH")) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    if threads:  # the worker's CPU budget: torch intra-op (EVALHARNESS_THREADS), OpenMP and MKL pools
        for name in ("EVALHARNESS_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(threads)
    for name, value in (extra or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _prctl():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the forked child only calls it
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _prctl() if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Runs in the worker between fork and exec: the kernel SIGKILLs the worker when its parent dies, so a parent
    killed with SIGKILL (or Ctrl-C) leaves no orphan writing into a job folder that `--resume` reuses. (The signal
    follows the forking *thread*: the pool starts each worker from the slot thread that uses it to the end.)"""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)


_ids = itertools.count(1)
_QUIET = ()  # no line within the poll interval


@dataclass
class Outcome:
    """How one job ended in a worker: its exit status (the job's rc, or the process's when it died), and why the
    parent stopped it (None, "stall", "total" or "cancelled")."""

    returncode: int | None
    stopped: str | None
    wall_s: float


class Worker:
    """One worker process serving jobs in turn (the model stays loaded)."""

    def __init__(self, key, python: str, pythonpath: str | None, cuda_device: str | None, threads: int | None,
                 first_log: Path, argv: list[str] | None = None, env: dict | None = None):
        self.key, self.id, self.jobs, self.alive = key, next(_ids), 0, True
        self.record: dict = {}  # the pool's account of this worker (load time, jobs, why it ended)
        self.cuda_device, self.threads = cuda_device, threads
        self.events: queue.Queue = queue.Queue()
        first_log.parent.mkdir(parents=True, exist_ok=True)
        with open(first_log, "a") as log:  # import errors land in the first job's log; then each job's own
            argv = argv or [python, "-m", "evalharness.engine.worker", "--serve"]  # another program speaking the same
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log, text=True,
                                         env=worker_env(pythonpath, cuda_device, threads, env),
                                         start_new_session=True,
                                         preexec_fn=functools.partial(die_with_parent, os.getpid()))
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.events.put(line.split())
        self.events.put(None)

    def run(self, job_dir: Path, limits: Limits, on_progress: Callable[[int, int], None] | None = None,
            cancelled: Callable[[], bool] | None = None) -> Outcome:
        """Hand the worker one job folder and wait for its DONE, its death, its silence past the limits, or
        `cancelled()` (--fail-fast: the worker is killed, its partial results stay)."""
        t0 = last = time.monotonic()
        phase = "load"
        self.jobs += 1
        try:
            self.proc.stdin.write(f"{job_dir}\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died already: its exit status follows
        while True:
            try:
                ev = self.events.get(timeout=0.5)
            except queue.Empty:
                ev = _QUIET
            now = time.monotonic()
            if ev is not _QUIET:
                last = now
            if cancelled is not None and cancelled():
                return self._stop("cancelled", t0)
            if limits.total_s is not None and now - t0 > limits.total_s:
                return self._stop("total", t0)
            if now - last > (limits.load_stall_s if phase == "load" else limits.stall_s):
                return self._stop("stall", t0)
            if ev is _QUIET or ev == []:
                continue
            if ev is None:  # the process died mid-job
                self.alive = False
                return Outcome(self.proc.wait(), None, time.monotonic() - t0)
            if ev[0] == "PROGRESS" and len(ev) == 3 and on_progress is not None:
                on_progress(int(ev[1]), int(ev[2]))
            elif ev[0] == "PHASE" and len(ev) == 2:
                phase = ev[1]
            elif ev[0] == "DONE" and len(ev) == 2:
                rc = int(ev[1])
                if rc != 0:  # the worker ends itself after a failed job
                    self.alive = False
                    self.proc.wait()
                return Outcome(rc, None, time.monotonic() - t0)

    def _stop(self, why: str, t0: float) -> Outcome:
        self.kill()
        return Outcome(self.proc.returncode, why, time.monotonic() - t0)

    def kill(self) -> None:
        self.alive = False
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def close(self, timeout: float = 30.0) -> None:
        """No more jobs: let the worker exit (end of its stdin), or kill it."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.alive = False
