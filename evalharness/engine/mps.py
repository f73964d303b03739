"""--mps: CUDA MPS control daemons of this invocation's own, so that its workers' kernels share the GPU instead of
time-slicing it.

Without MPS, each worker process has its own CUDA context and the GPU switches between contexts: a worker bound by
host-side launches (the eager `off` reference, the padded-eager twin) waits for the others' time slices. Measured on
the H200 (reports/h200-speed/contention/, Gemma 3 270M, 4 workers, a daemon started by hand as this module starts its
own): the `off` run generated in 112 s beside three others without MPS, 90 s with it (77 s alone).

The daemons are private: each one's pipe and log folders are a temporary folder passed to the workers only
(CUDA_MPS_PIPE_DIRECTORY, CUDA_MPS_LOG_DIRECTORY), so other CUDA processes on the machine are not affected, and each is
told to quit when the invocation ends. One daemon per GPU, as NVIDIA's documentation sets MPS up: the daemon is
started with CUDA_VISIBLE_DEVICES naming its GPU (with --devices) or the invocation's own (without), and its clients
run *without* CUDA_VISIBLE_DEVICES, the server's GPU being theirs. (A client that keeps CUDA_VISIBLE_DEVICES=1 under
a server started on GPU 1 sees no GPU at all: found on the H200, reports/h200-speed/README.md.)

What MPS changes, and why it is not the default: a fatal GPU fault in one client (an illegal memory access from a
stale graph) is reported to every client of that GPU (NVIDIA's MPS documentation, "Error Containment"), so one fault
takes the other workers' jobs with it: on the H200 a neighbour's worker crashed, and another caught the illegal
memory access inside the engine and lived on (reports/h200-speed/one-gpu/lease-3/gemma-mps-fault). The pool retries
each job that crashed or failed with a CUDA error (pool.needs_retry) in a fresh worker outside MPS: a fault is then
attributed to the job that faults on its own, as without --mps, at the cost of the re-runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..config import UsageError

CONTROL = "nvidia-cuda-mps-control"


class Daemon:
    """`with Daemon(devices) as d:` starts one MPS control daemon per GPU of `devices` (one for the invocation's GPUs
    without --devices); a UsageError (one line) if one cannot start. `d.worker_env(device)` is what the environment of
    a worker pinned to `device` needs (None values: variables to unset)."""

    def __init__(self, devices: list[str] | None = None):
        self.devices = list(dict.fromkeys(devices)) if devices else [None]
        self.exe, self.folder = None, None
        self.pipes: dict[str | None, dict] = {}

    def worker_env(self, device: str | None) -> dict:
        return {**self.pipes[device], "CUDA_VISIBLE_DEVICES": None}

    def __enter__(self) -> Daemon:
        self.exe = shutil.which(CONTROL)
        if self.exe is None:
            raise UsageError(f"--mps: {CONTROL} is not on PATH (CUDA MPS comes with the NVIDIA driver)")
        self.folder = Path(tempfile.mkdtemp(prefix="evalharness-mps-"))
        try:
            for i, device in enumerate(self.devices):
                self._start(i, device)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self, i: int, device: str | None) -> None:
        pipes = {"CUDA_MPS_PIPE_DIRECTORY": str(self.folder / f"pipe{i}"),
                 "CUDA_MPS_LOG_DIRECTORY": str(self.folder / f"log{i}")}
        for path in pipes.values():
            Path(path).mkdir()
        env = {**os.environ, **pipes}
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        try:
            started = subprocess.run([self.exe, "-d"], env=env, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise UsageError(f"--mps: {CONTROL} -d did not start ({e})")
        if started.returncode != 0:
            why = (started.stderr or started.stdout).strip().splitlines()
            raise UsageError(f"--mps: {CONTROL} -d exited {started.returncode}{': ' + why[-1] if why else ''}")
        self.pipes[device] = pipes

    def __exit__(self, *exc) -> None:
        for pipes in self.pipes.values():
            try:
                subprocess.run([self.exe], input="quit\n", env={**os.environ, **pipes}, capture_output=True,
                               text=True, timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                pass  # a daemon left behind holds no GPU memory; its folder goes below either way
        self.pipes = {}
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
