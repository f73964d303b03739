"""CUDA MPS control daemons of an invocation's own, so that its workers' kernels share the GPU instead of
time-slicing it: the default wherever several workers share a GPU and a daemon starts and serves a client (`--mps`
insists, `--no-mps` turns it off; `Daemons` decides, once per invocation).

Without MPS, each worker process has its own CUDA context and the GPU switches between contexts: a worker bound by
host-side launches (the eager `off` reference, the padded-eager twin) waits for the others' time slices. Measured on
the H200 (reports/h200-speed/one-gpu/lease-3, Gemma 3 270M, 4 workers, each verdict timed right before its slowest
run alone): `off` beside three workers generated 1.13-1.41x slower than alone without MPS, 1.05-1.07x through a
daemon of this module's, and the verdict took 1.19-1.22x its slowest run alone (plain 1.24-1.43x).

The daemons are private: each one's pipe and log folders are a temporary folder passed to the workers only
(CUDA_MPS_PIPE_DIRECTORY, CUDA_MPS_LOG_DIRECTORY), so other CUDA processes on the machine are not affected, and each is
told to quit when the invocation ends. One daemon per GPU, as NVIDIA's documentation sets MPS up: the daemon is
started with CUDA_VISIBLE_DEVICES naming its GPU (with --devices) or the invocation's own (without), and its clients
run *without* CUDA_VISIBLE_DEVICES, the server's GPU being theirs. (A client that keeps CUDA_VISIBLE_DEVICES=1 under
a server started on GPU 1 sees no GPU at all: found on the H200, reports/h200-speed/README.md.)

What MPS changes: a fatal GPU fault in one client (an illegal memory access from a stale graph) is reported to every
client of that GPU (NVIDIA's MPS documentation, "Error Containment"), so one fault takes the other workers' jobs with
it: on the H200 a neighbour's worker crashed, and another caught the illegal memory access inside the engine and lived
on (reports/h200-speed/one-gpu/lease-3/gemma-mps-fault). The pool retries each job that crashed or failed with a CUDA
error (pool.needs_retry) in a fresh worker outside MPS: a fault is then attributed to the job that faults on its own,
as without MPS, at the cost of the re-runs (recorded on the H200: one-gpu/lease-4/gemma-mps-fault). A daemon whose
server cannot serve a client is found out before any worker starts (CLIENT_CHECK).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from ..config import UsageError

CONTROL = "nvidia-cuda-mps-control"

# A client's first step, through the CUDA driver API alone (no torch: well under a second): the control daemon starts
# its server when the first client connects, and where MPS cannot work (a container without the IPC it needs, a GPU
# in a compute mode that refuses it) `-d` succeeds all the same and only a client finds out.
CLIENT_CHECK = r"""
import ctypes, sys
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError as e:
    sys.exit(f"no CUDA driver library ({e})")
dev, ctx = ctypes.c_int(), ctypes.c_void_p()
for step, call in (("cuInit", lambda: cuda.cuInit(0)), ("cuDeviceGet", lambda: cuda.cuDeviceGet(ctypes.byref(dev), 0)),
                   ("cuDevicePrimaryCtxRetain", lambda: cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev))):
    rc = call()
    if rc != 0:
        name = ctypes.c_char_p()
        cuda.cuGetErrorName(rc, ctypes.byref(name))
        sys.exit(f"{step} failed: {(name.value or b'CUDA error %d' % rc).decode()}")
cuda.cuDevicePrimaryCtxRelease_v2(dev)
"""


class Unavailable(RuntimeError):
    """A daemon could not start or serve a client (one line: why)."""


class Daemon:
    """`with Daemon(devices) as d:` starts one MPS control daemon per GPU of `devices` (one for the invocation's GPUs
    without --devices) and checks that a client of each reaches the GPU; `Unavailable` (one line) if one cannot, none
    left behind. `d.worker_env(device)` is what the environment of a worker pinned to `device` needs (None values:
    variables to unset)."""

    def __init__(self, devices: list[str] | None = None):
        self.devices = list(dict.fromkeys(devices)) if devices else [None]
        self.exe, self.folder = None, None
        self.pipes: dict[str | None, dict] = {}

    def worker_env(self, device: str | None) -> dict:
        return {**self.pipes[device], "CUDA_VISIBLE_DEVICES": None}

    def __enter__(self) -> Daemon:
        self.exe = shutil.which(CONTROL)
        if self.exe is None:
            raise Unavailable(f"{CONTROL} is not on PATH (CUDA MPS comes with the NVIDIA driver)")
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
            raise Unavailable(f"{CONTROL} -d did not start ({e})")
        if started.returncode != 0:
            why = (started.stderr or started.stdout).strip().splitlines()
            raise Unavailable(f"{CONTROL} -d exited {started.returncode}{': ' + why[-1] if why else ''}")
        self.pipes[device] = pipes  # started: told to quit at the end, also if its client check fails
        self._check_client(device)

    def _check_client(self, device: str | None) -> None:
        env = {**os.environ, **self.pipes[device]}
        env.pop("CUDA_VISIBLE_DEVICES", None)  # as worker_env: the server's GPU is the client's
        try:
            checked = subprocess.run([sys.executable, "-c", CLIENT_CHECK], env=env, capture_output=True, text=True,
                                     timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Unavailable(f"a client of {CONTROL} did not answer ({e})")
        if checked.returncode != 0:
            why = (checked.stderr or checked.stdout).strip().splitlines()
            raise Unavailable(f"a client of {CONTROL} could not use the GPU{': ' + why[-1] if why else ''}")

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


class Daemons:
    """The invocation's `--mps` setting (auto, on, off) applied: `env(shared)` is called by execute.run_jobs once it
    has jobs for the pool and knows whether several workers will share a GPU, and gives what adds to each worker's
    environment (Daemon.worker_env) or None. The daemons start on the first call that needs them, once, in `stack`
    (quit when it closes): with `on` always (a daemon that cannot start is a usage error), with `auto` only where
    workers share a GPU (one that cannot start is one line, and the workers time-slice the GPU), with `off` never.
    Either way one line says what the workers do."""

    def __init__(self, mode: str, devices: list[str] | None, stack: contextlib.ExitStack):
        self.mode, self.devices, self.stack = mode, devices, stack
        self.tried, self.env = False, None

    def __call__(self, shared: bool) -> Callable[[str | None], dict] | None:
        if self.tried or self.mode == "off" or (self.mode == "auto" and not shared):
            return self.env
        self.tried = True
        try:
            self.env = self.stack.enter_context(Daemon(self.devices)).worker_env
        except Unavailable as e:
            if self.mode == "on":
                raise UsageError(f"--mps: {e}")
            line = f"no MPS ({e}): the workers sharing a GPU time-slice it (--no-mps: do not try)"
        else:
            line = "MPS: the workers sharing a GPU run their kernels side by side (--no-mps: time-slice it instead)"
        print(f"evalharness: {line}", file=sys.stderr, flush=True)
        return self.env
