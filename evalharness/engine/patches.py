"""Patches applied inside one worker process, before the engine is built: the padded-eager twin (the faults, which
also patch the engine, are in faults.py).

They target transformers' continuous-batching internals by name and check that those names exist first: when an
internal moved, the patch raises `PatchError` naming what it looked for and the transformers version, instead of
silently testing nothing. Written by hand: no library patches transformers' CB engine.
"""

from __future__ import annotations

import functools
from typing import Any


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


def io_class():
    """transformers' ContinuousBatchingIOs, checked for the methods the graph-key faults patch."""
    _, _, io_mod = _cb_modules()
    cls = _require(io_mod, "ContinuousBatchingIOs", "input_outputs")
    _require(cls, "_get_graph_key", "ContinuousBatchingIOs")
    _require(cls, "get_model_kwargs", "ContinuousBatchingIOs")
    return cls
