"""Patches applied inside one worker process, before the engine is built: the padded-eager twin (the faults, which
also patch the engine, are in faults.py).

They target transformers' continuous-batching internals by name and check that those names exist first: when an
internal moved, the patch raises `PatchError` naming what it looked for and the transformers version, instead of
silently testing nothing. Written by hand: no library patches transformers' CB engine.
"""

from __future__ import annotations

import functools
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


class _Padding:
    """Whether the processor being built now is a padded-eager twin's: the patch is installed once per process and
    read at each ContinuousBatchProcessor construction, so one worker can serve a twin and a plain run in turn (one
    job at a time, and a processor is built inside generate_batch, after the job set this)."""

    installed = False
    enabled = False
    pad_seqlen_k: bool | None = None
    notes: list[str] = []


def set_padding(enabled: bool, pad_seqlen_k: bool | None) -> list[str]:
    """Force padding on (a twin) or leave the engine as is for the next processor built in this process. Returns the
    list the patch adds its notes to while the job runs (for the report)."""
    if enabled and not _Padding.installed:
        install_padding()
    _Padding.enabled, _Padding.pad_seqlen_k, _Padding.notes = bool(enabled), pad_seqlen_k, []
    return _Padding.notes


def force_padding(pad_seqlen_k: bool | None) -> list[str]:
    """Make a graphs-off engine pad its batches exactly as a graph run does (the padded-eager twin)."""
    return set_padding(True, pad_seqlen_k)


def install_padding() -> None:
    """Wrap ContinuousBatchProcessor.__init__ once. While `_Padding.enabled`: after the batch processor is built,
    switch its padding flag on (ModelRunner.pad_inputs in 5.17+, the processor's own _pad_inputs before), and set the
    IOs' use_cuda_graph_varlen flag, which decides whether max_seqlen_q/k are padded, to what the graph run has.
    """
    version, api, _ = _cb_modules()
    cls = _require(api, "ContinuousBatchProcessor", "continuous_api")
    original_init = cls.__init__

    @functools.wraps(original_init)
    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if not _Padding.enabled:
            return
        pad_seqlen_k, notes = _Padding.pad_seqlen_k, _Padding.notes
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
    _Padding.installed = True


def install_heartbeat(beat: Callable[[], None]) -> bool:
    """Call `beat` after every engine step (ContinuousBatchProcessor.update_batch, in both the 5.5 and 5.17+ layouts):
    the parent's sign of life between finished requests. Returns False where the step method is not found."""
    _, api, _ = _cb_modules()
    cls = getattr(api, "ContinuousBatchProcessor", None)
    original = getattr(cls, "update_batch", None)
    if original is None:
        return False

    @functools.wraps(original)
    def update_batch(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        beat()
        return out

    cls.update_batch = update_batch
    return True


def io_class():
    """transformers' ContinuousBatchingIOs, checked for the methods the graph-key faults patch."""
    _, _, io_mod = _cb_modules()
    cls = _require(io_mod, "ContinuousBatchingIOs", "input_outputs")
    _require(cls, "_get_graph_key", "ContinuousBatchingIOs")
    _require(cls, "get_model_kwargs", "ContinuousBatchingIOs")
    return cls


def count_graph_captures() -> dict[str, int] | None:
    """Count the CUDA graphs the engine captures, per path (decode: block-table batches), through
    ContinuousBatchingIOs.set_graph; the dict fills in as the run goes. None where this layout has no set_graph."""
    try:
        cls = io_class()
    except PatchError:
        return None
    original = getattr(cls, "set_graph", None)
    if original is None:
        return None
    counts = {"varlen": 0, "decode": 0}

    @functools.wraps(original)
    def set_graph(self, graph, *args, **kwargs):
        counts["decode" if getattr(self, "use_block_table", False) else "varlen"] += 1
        return original(self, graph, *args, **kwargs)

    cls.set_graph = set_graph
    return counts
