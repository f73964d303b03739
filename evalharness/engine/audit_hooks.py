"""`--audit` inside a worker: every CUDA-graph replay is re-run eagerly on the same static inputs and compared.

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

from ..audit import Auditor, Launch
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
