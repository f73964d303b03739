"""The stale-constant check (every graph run) and `--audit` inside a worker.

The stale-constant check (`install_constant_check`) wraps transformers' ContinuousBatchingIOs, whose methods every
graph run goes through in 5.5.x and 5.17+ alike: `get_model_kwargs` (the host-side launch constants of each batch,
padded as the graph run pads them), `get_graph` (a graph found for the batch's key: a replay) and `set_graph` (a
capture). It costs a few dict lookups per step and never touches the GPU; it reports to an audit.ConstantCheck.

`--audit`: every CUDA-graph replay is re-run eagerly on the same static inputs and compared.

Wraps the model runner's `compute_batch` (transformers 5.17+ layout: ModelRunner with inputs_and_outputs,
_get_forward_fn and get_cb_kwargs; the names are checked first and a PatchError names what moved). At a capture it
records the launch constants the forward received; at a replay it reads the sampled tokens the graph produced, runs
the forward function eagerly with the same batch (same static tensors, the current launch constants), reads its
tokens, puts the graph's tokens back (the run continues exactly as without the audit) and reports both to the
`Auditor`. The eager re-run rewrites the KV cache slots of this step with the values the graph should have written.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext

from ..audit import Auditor, ConstantCheck, Launch
from .patches import PatchError


def current_device_io(io):
    """The IO whose static tensors and graph buffer this step uses (the current pair's device IO when async)."""
    if hasattr(io, "io_pairs"):
        return io.io_pairs[io.current_pair].device_io
    return io


def launch_of(dev, batch_data: dict, key: tuple, path: str) -> Launch:
    k = batch_data["max_seqlen_k"]
    return Launch(path=path, key=tuple(key), max_seqlen_q=int(batch_data["max_seqlen_q"]),
                  max_seqlen_k={lt: int(v) for lt, v in k.items()} if isinstance(k, dict)
                  else {"full_attention": int(k)},
                  num_q_tokens=int(dev.num_q_tokens), max_kv_read=int(dev.max_kv_read),
                  num_sequences=int(batch_data["cu_seq_lens_q"].numel()) - 1)


def install(auditor: Auditor, runner_cls=None) -> None:
    import torch

    if runner_cls is None:
        try:
            from transformers.generation.continuous_batching.model_runner import ModelRunner as runner_cls
        except ImportError as e:
            raise PatchError(f"--audit needs transformers' ModelRunner (5.17+ layout): {e}") from e
    for name in ("compute_batch", "_get_forward_fn"):
        if not hasattr(runner_cls, name):
            raise PatchError(f"--audit: {runner_cls.__name__} has no {name}; the audit does not know this layout")
    original = runner_cls.compute_batch
    state = {"step": 0}

    @functools.wraps(original)
    def compute_batch(self, model, batch_data):
        state["step"] += 1
        io = self.inputs_and_outputs
        dev = current_device_io(io)
        use_block_table = bool(getattr(io, "use_block_table", getattr(dev, "use_block_table", False)))
        forward_fn, use_graph = self._get_forward_fn(use_block_table=use_block_table)
        if not use_graph:
            return original(self, model, batch_data)
        key = tuple(dev._get_graph_key())
        existed = dev.graphs.get_graph(key) is not None
        launch = launch_of(dev, batch_data, key, "decode" if use_block_table else "varlen")
        original(self, model, batch_data)
        if not existed:
            auditor.on_capture(launch)
            return None
        if auditor.stopped:
            auditor.not_audited += 1
            return None
        carry_over_ids, prev_output_ids, output_ids = io.get_cb_kwargs()
        n = int(batch_data["logits_indices"].numel())
        stream = getattr(io, "compute_stream", None)
        if stream is not None:
            stream.synchronize()
        graph_tokens = output_ids[0, :n].clone()
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            forward_fn(model, batch_data, carry_over_ids, prev_output_ids, output_ids)
        if stream is not None:
            stream.synchronize()
        eager_tokens = output_ids[0, :n].clone()
        output_ids[0, :n].copy_(graph_tokens)
        requests = [fs.state.request_id for fs in getattr(dev, "requests_in_batch", [])]
        auditor.on_replay(state["step"], launch, graph_tokens.tolist(), eager_tokens.tolist(), requests)
        return None

    runner_cls.compute_batch = compute_batch


def launch_constants(kwargs) -> dict:
    """The forward's keyword arguments as launch constants: ints and bools by value, a per-layer-type dict one entry
    per type, tensors by shape, lists of tensors one shape per item; other objects (the cache) are left out."""
    import dataclasses

    import torch

    if dataclasses.is_dataclass(kwargs):  # transformers 5.5.x: PagedAttentionArgs is a dataclass
        kwargs = {f.name: getattr(kwargs, f.name) for f in dataclasses.fields(kwargs)}
    out: dict = {}

    def add(name: str, value) -> None:
        if isinstance(value, torch.Tensor):
            out[f"{name}.shape"] = tuple(value.shape)  # a tuple: cheap to compare (audit.py lists it for JSON)
        elif isinstance(value, (bool, int, float)) or value is None:
            out[name] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                add(f"{name}[{k}]", v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                add(f"{name}[{i}]", v)

    for name, value in kwargs.items():
        add(name, value)
    return out


def install_constant_check(check, io_cls=None) -> None:
    """Wrap `io_cls` (transformers' ContinuousBatchingIOs) once per process. `check`: a ConstantCheck, or a function
    returning the current job's (None: this job is not checked), for a worker that serves several jobs."""
    current = check if callable(check) else (lambda: check)
    if io_cls is None:
        try:
            from transformers.generation.continuous_batching.input_outputs import ContinuousBatchingIOs as io_cls
        except ImportError as e:
            raise PatchError(f"stale-constant check: transformers has no ContinuousBatchingIOs: {e}") from e
    for name in ("get_model_kwargs", "get_graph", "set_graph"):
        if not hasattr(io_cls, name):
            raise PatchError(f"stale-constant check: {io_cls.__name__} has no {name}; the check does not know this "
                             "layout")
    original_kwargs, original_get, original_set = io_cls.get_model_kwargs, io_cls.get_graph, io_cls.set_graph
    state = {"step": 0}

    def graph_key(io) -> tuple:
        if hasattr(io, "_get_graph_key"):  # 5.6+
            return tuple(io._get_graph_key())
        return (io.num_q_tokens, io.max_kv_read)  # 5.5.x: CudaGraphBuffer keyed by these two

    def path(io) -> str:
        return "decode" if getattr(io, "use_block_table", False) else "varlen"

    @functools.wraps(original_kwargs)
    def get_model_kwargs(self, *args, **kwargs):
        out = original_kwargs(self, *args, **kwargs)
        if current() is not None:
            state["step"] += 1
            self._evalharness_launch = launch_constants(out)
        return out

    @functools.wraps(original_get)
    def get_graph(self, *args, **kwargs):
        graph = original_get(self, *args, **kwargs)
        check = current()
        if graph is not None and check is not None:
            check.on_replay(id(self), state["step"], path(self), graph_key(self),
                            getattr(self, "_evalharness_launch", {}))
        return graph

    @functools.wraps(original_set)
    def set_graph(self, *args, **kwargs):
        original_set(self, *args, **kwargs)
        check = current()
        if check is not None:
            check.on_capture(id(self), path(self), graph_key(self), getattr(self, "_evalharness_launch", {}))

    io_cls.get_model_kwargs, io_cls.get_graph, io_cls.set_graph = get_model_kwargs, get_graph, set_graph
