"""Injected faults: deliberate defects in one mode's worker, to prove that the checks can fail.

The registry `FAULTS` is the one place a fault is defined. Each entry carries its hooks, called by the worker
(engine/run_job.py) at fixed points, and whether the padded-eager twin gets the same patch (`patches_twin`: then only
graph staleness can make the run and its twin differ). Hooks import torch and transformers lazily, so the parent
process (planning) never does. Written by hand: no library injects faults into transformers' CB engine.

Besides faults (`kind` "fault"), the registry holds what is injected the same way but is not a defect: a fix candidate
for transformers (`kind` "fix": `sync-reset`, which the user turns on to attribute a finding to the bug it fixes) and a
probe (`kind` "probe": measures, changes nothing). `evalharness faults` lists every entry with its description.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Fault:
    name: str
    patches_twin: bool  # the padded-eager twin gets the same patch, so only graph staleness can differ
    about: str = ""  # one line for `evalharness faults` and the docs
    kind: str = "fault"  # "fault" (a defect), "fix" (a fix candidate for transformers, not a fault), "probe"
    # before the engine is built: patches transformers' CB classes (process-wide)
    engine_patch: Callable[[], None] | None = None
    # after the model is loaded: (model, engine configuration as in job.json) -> a hook handle to remove after the
    # job (a reused worker's model serves the next job), or None
    model_hook: Callable[[Any, dict], None] | None = None
    # fired once, when the first request has finished (so partial results exist): (timeout hint in s)
    after_first_result: Callable[[float], None] | None = None
    # installed before each job's generate_batch, removed after it: () -> an object with remove() and report() (a
    # dict for meta.json's "patch": what was patched and what the patch saw), e.g. engine.reset_race.Installed
    job_patch: Callable[[], Any] | None = None


def _io_class():
    from .engine.patches import io_class

    return io_class()


def _set(kwargs: Any, key: str, value: Any) -> None:
    if isinstance(kwargs, dict):
        kwargs[key] = value
    else:
        setattr(kwargs, key, value)


def _get(kwargs: Any, key: str) -> Any:
    return kwargs[key] if isinstance(kwargs, dict) else getattr(kwargs, key)


def inject_pre45323() -> None:
    """Varlen graph key (num_q_tokens, max_kv_read) without max_seqlen_k; raw (unpadded) max_seqlen_q/k handed to the
    kernel: the behaviour before transformers PR #45323."""
    cls = _io_class()
    original_kwargs = cls.get_model_kwargs
    original_key = cls._get_graph_key

    @functools.wraps(original_kwargs)
    def get_model_kwargs(self, use_padding: bool = False):
        raw_q = self.max_seqlen_q
        raw_k = dict(self.max_seqlen_k) if isinstance(self.max_seqlen_k, dict) else self.max_seqlen_k
        kwargs = original_kwargs(self, use_padding)
        self.max_seqlen_q, self.max_seqlen_k = raw_q, raw_k
        if not getattr(self, "use_block_table", False):
            _set(kwargs, "max_seqlen_q", raw_q)
            current = _get(kwargs, "max_seqlen_k")
            if isinstance(current, dict):
                _set(kwargs, "max_seqlen_k", {lt: raw_k[lt] for lt in current})
            else:
                _set(kwargs, "max_seqlen_k", next(iter(raw_k.values())) if isinstance(raw_k, dict) else raw_k)
        return kwargs

    def graph_key(self):
        if getattr(self, "use_block_table", False):
            return original_key(self)
        return (self.num_q_tokens, self.max_kv_read)

    cls.get_model_kwargs = get_model_kwargs
    cls._get_graph_key = graph_key


def inject_coarse_key() -> None:
    """Varlen graph key reduced to (num_q_tokens,)."""
    cls = _io_class()
    original_key = cls._get_graph_key

    def graph_key(self):
        if getattr(self, "use_block_table", False):
            return original_key(self)
        return (self.num_q_tokens,)

    cls._get_graph_key = graph_key


def inject_decode_coarse() -> None:
    """Decode graph key reduced to a constant: every decode-only batch, whatever its padded size, replays the first
    decode graph captured (rows past its size are not computed, rows before it read stale inputs)."""
    cls = _io_class()
    original_key = cls._get_graph_key

    def graph_key(self):
        if getattr(self, "use_block_table", False):
            return ("decode",)
        return original_key(self)

    cls._get_graph_key = graph_key


def inject_perturb(model: Any, every: int = 7) -> Any:
    """Every `every`-th forward step, make every sampled position pick argmax+1: a corrupted engine on any device."""
    import torch

    calls = {"n": 0}

    def hook(_module, _args, output):
        calls["n"] += 1
        if calls["n"] % every:
            return output
        logits = output.logits
        bumped = (logits.argmax(-1, keepdim=True) + 1) % logits.shape[-1]
        logits.scatter_(-1, bumped, torch.finfo(logits.dtype).max)
        return output

    return model.register_forward_hook(hook)  # the handle: a reused worker removes the hook after the job


def perturb_first_attempt(model: Any, engine: dict) -> Any:
    """`flaky`: `perturb` in the first run of a mode only (attempt 0); its repeats and confirmation re-runs (attempt
    1, 2, ...) are clean. An engine that gives two different outputs for identical input, on any device."""
    if not engine.get("attempt"):
        return inject_perturb(model)
    return None


def abort(_timeout_hint_s: float) -> None:
    """The worker aborts (SIGABRT)."""
    os.kill(os.getpid(), signal.SIGABRT)


def gpu_fault(_timeout_hint_s: float) -> None:
    """The worker's GPU faults: an illegal memory access (engine/gpu_fault.py), as a stale graph's can. On a machine
    without CUDA the job fails with that reason instead."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("the gpu-fault fault needs a CUDA GPU (it makes the GPU fault)")
    from .engine.gpu_fault import fault

    fault()


def mps_neighbour(_timeout_hint_s: float) -> None:
    """In a worker started through an MPS daemon (--mps), the error a neighbour's GPU fault gives every client of
    that MPS server; nothing in a worker of its own. A job that is innocent under MPS, on any device."""
    if os.environ.get("CUDA_MPS_PIPE_DIRECTORY"):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (mps-neighbour: a neighbour's GPU "
                           "fault, as an MPS server reports it to every client)")


def hang(timeout_hint_s: float) -> None:
    """The worker sleeps past its timeout."""
    time.sleep(max(3600.0, 10 * timeout_hint_s))


def reset_late():
    """See engine/reset_race.py: install_force."""
    from .engine.reset_race import install_force

    return install_force()


def sync_reset():
    """See engine/reset_race.py: install_fix."""
    from .engine.reset_race import install_fix

    return install_fix()


def reset_probe():
    """See engine/reset_race.py: install_probe."""
    from .engine.reset_race import install_probe

    return install_probe()


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault("pre45323", patches_twin=True, engine_patch=inject_pre45323,
              about="varlen graph key without max_seqlen_k and unpadded max_seqlen_q/k (before transformers PR "
              "#45323): stale graphs; the twin gets it too"),
        Fault("coarse-key", patches_twin=False, engine_patch=inject_coarse_key,
              about="varlen graph key reduced to (num_q_tokens,): stale graphs"),
        Fault("decode-coarse", patches_twin=False, engine_patch=inject_decode_coarse,
              about="one decode graph for every decode batch size: stale graphs on the decode path"),
        Fault("perturb", patches_twin=False, model_hook=lambda model, _engine: inject_perturb(model),
              about="every 7th step samples argmax+1: a corrupted engine on any device"),
        Fault("flaky", patches_twin=False, model_hook=perturb_first_attempt,
              about="perturb in a mode's first run only: a non-deterministic engine on any device"),
        Fault("abort", patches_twin=False, after_first_result=abort,
              about="the worker aborts (SIGABRT) after the first finished request"),
        Fault("gpu-fault", patches_twin=False, after_first_result=gpu_fault,
              about="the worker's GPU faults (a kernel writes far outside its buffer: an illegal memory access, as a "
              "stale graph's can) after the first finished request; CUDA only (under --mps it reaches every worker "
              "of that GPU)"),
        Fault("mps-neighbour", patches_twin=False, after_first_result=mps_neighbour,
              about="under --mps only: the job fails with the CUDA error a neighbour's GPU fault gives every worker "
              "of that GPU, after the first finished request; outside MPS (its retry) it runs clean"),
        Fault("hang", patches_twin=False, after_first_result=hang,
              about="the worker sleeps past its timeout after the first finished request"),
        # transformers' async-batching reset race (engine/reset_race.py). reset-late is not given to the twin: the
        # twin stays the clean reference, so the graph run differs from it in every run (the same mismatches each
        # time: STALE_GRAPH once confirmed), where the real race differs in some runs only (NONDETERMINISTIC)
        Fault("reset-late", patches_twin=False, job_patch=reset_late,
              about="async batching (CUDA): the start-of-run reset's device writes land after step 1's H2D copy, "
              "every run (transformers' reset race, forced): the first request is wrong from its first token"),
        Fault("sync-reset", patches_twin=True, kind="fix", job_patch=sync_reset,
              about="not a fault: a fix candidate for transformers' reset race (synchronise the stream after the "
              "async IOs' build and reset); inject it into every mode (the twin gets it too) to attribute "
              "non-deterministic first tokens to the race"),
        Fault("reset-probe", patches_twin=True, kind="probe", job_patch=reset_probe,
              about="not a fault: times the async IOs' last build/reset against step 1's H2D copy (meta.json "
              "\"patch\"; positive reset_end_after_h2d_start_ms: the race window was hit); changes nothing"),
    )
}


KIND_TITLES = {"fault": "faults (defects, to prove the checks fail)",
               "fix": "fix candidates for transformers (not faults: turn one on to attribute a finding)",
               "probe": "probes (not faults: they measure and change nothing)"}


def listing() -> str:
    """`evalharness faults`: every entry by kind, with whether the twin gets it and its description."""
    lines = []
    for kind, title in KIND_TITLES.items():
        lines.append(f"{title}:")
        for f in FAULTS.values():
            if f.kind == kind:
                twin = "run and twin" if f.patches_twin else "run only"
                lines.append(f"  {f.name:<14} [{twin}] {f.about}")
    lines.append("inject with --inject [ENGINE:]MODE=NAME (into `off` too, for a fix or probe that every run needs)")
    return "\n".join(lines)


def names(kind: str) -> list[str]:
    return [f.name for f in FAULTS.values() if f.kind == kind]


def fault(name: str | None) -> Fault:
    """The registry entry for `name`; no fault (None) is an entry without hooks."""
    return FAULTS[name] if name else Fault("", patches_twin=False)
