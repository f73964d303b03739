"""Patches applied inside one worker process, before the engine is built: the padded-eager twin and the faults.

They target transformers' continuous-batching internals by name and check that those names exist first: when an
internal moved, the patch raises `PatchError` naming what it looked for and the transformers version, instead of
silently testing nothing. Written by hand: no library injects faults into transformers' CB engine.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from typing import Any, Callable


class PatchError(RuntimeError):
    pass


def _cb_modules():
    import transformers
    from transformers.generation.continuous_batching import continuous_api, input_outputs

    return transformers.__version__, continuous_api, input_outputs


def _require(obj: Any, name: str, what: str) -> Any:
    version = _cb_modules()[0]
    if not hasattr(obj, name):
        raise PatchError(f"transformers {version}: {what} has no attribute {name!r}; this patch does not know this "
                         "engine layout")
    return getattr(obj, name)


def device_ios(io: Any) -> list[Any]:
    """The ContinuousBatchingIOs objects behind the processor's inputs_and_outputs (two device IOs when async)."""
    if hasattr(io, "io_pairs"):
        return [pair.device_io for pair in io.io_pairs]
    return [io]


def force_padding(pad_seqlen_k: bool | None) -> list[str]:
    """Make a graphs-off engine pad its batches exactly as a graph run does (the padded-eager twin).

    After the batch processor is built: switch its padding flag on (ModelRunner.pad_inputs in 5.17+, the processor's
    own _pad_inputs before), and set the IOs' use_cuda_graph_varlen flag, which decides whether max_seqlen_q/k are
    padded, to what the graph run has. Returns notes for the report.
    """
    version, api, _ = _cb_modules()
    cls = _require(api, "ContinuousBatchProcessor", "continuous_api")
    original_init = cls.__init__
    notes: list[str] = []

    @functools.wraps(original_init)
    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        runner = getattr(self, "model_runner", None)
        if runner is not None and hasattr(runner, "pad_inputs"):
            runner.pad_inputs = True
        elif hasattr(self, "_pad_inputs"):
            self._pad_inputs = True
        else:
            raise PatchError(f"transformers {version}: found neither ModelRunner.pad_inputs nor "
                             "ContinuousBatchProcessor._pad_inputs to force padding on")
        if pad_seqlen_k is not None:
            for io in device_ios(self.inputs_and_outputs):
                if hasattr(io, "use_cuda_graph_varlen"):
                    io.use_cuda_graph_varlen = pad_seqlen_k
                elif pad_seqlen_k:
                    notes.append(f"transformers {version} has no use_cuda_graph_varlen on its IOs: it pads no "
                                 "max_seqlen (pre-#45323 layout), so neither does the twin")

    cls.__init__ = init
    return notes


def _io_class():
    _, _, io_mod = _cb_modules()
    cls = _require(io_mod, "ContinuousBatchingIOs", "input_outputs")
    _require(cls, "_get_graph_key", "ContinuousBatchingIOs")
    _require(cls, "get_model_kwargs", "ContinuousBatchingIOs")
    return cls


def _set(kwargs: Any, key: str, value: Any) -> None:
    if isinstance(kwargs, dict):
        kwargs[key] = value
    else:
        setattr(kwargs, key, value)


def _get(kwargs: Any, key: str) -> Any:
    return kwargs[key] if isinstance(kwargs, dict) else getattr(kwargs, key)


def inject_pre45323() -> None:
    """Varlen graph key (num_q_tokens, max_kv_read) without max_seqlen_k; raw max_seqlen_q/k handed to the kernel."""
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
    cls = _io_class()
    original_key = cls._get_graph_key

    def graph_key(self):
        if getattr(self, "use_block_table", False):
            return original_key(self)
        return (self.num_q_tokens,)

    cls._get_graph_key = graph_key


def inject_perturb(model: Any, every: int = 7) -> None:
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

    model.register_forward_hook(hook)


def after_first_result(fault: str | None, timeout_hint_s: float) -> Callable[[], None] | None:
    """The abort and hang faults, fired once the first request has finished (so partial results exist)."""
    if fault == "abort":
        return lambda: os.kill(os.getpid(), signal.SIGABRT)
    if fault == "hang":
        return lambda: time.sleep(max(3600.0, 10 * timeout_hint_s))
    return None


def apply_engine_fault(fault: str | None) -> None:
    if fault == "pre45323":
        inject_pre45323()
    elif fault == "coarse-key":
        inject_coarse_key()
