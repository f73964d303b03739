"""`--attn torch-flash`: a paged attention backend on PyTorch's own FlashAttention varlen kernel.

`torch.nn.attention.varlen.varlen_attn` takes max_q / max_k as Python ints, exactly like flash-attn's
`flash_attn_varlen_func`, so under CUDA graphs it exposes the same stale-launch-constant bug class on machines
without flash-attn. It mirrors the varlen branch of transformers' `integrations/flash_paged.py`: cache update
through read/write indices, causal attention aligned to the end of each key sequence, native GQA, sliding windows.
It has no decode fast path (no block table), like any non flash-attn backend in transformers' CB engine.
"""

from __future__ import annotations

import inspect

NAME = "torch_varlen"  # no "flash" in it: transformers would then try to load a flash-attn kernel by that name


def _varlen():
    import torch

    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError as e:  # pragma: no cover - depends on the torch build
        raise RuntimeError(f"--attn torch-flash needs torch.nn.attention.varlen (torch >= 2.10); torch "
                           f"{torch.__version__} lacks it") from e
    return varlen_attn


def paged_torch_flash_forward(module, q, k, v, attention_mask=None, cache=None, cu_seq_lens_q=None,
                              cu_seq_lens_k=None, max_seqlen_q=None, max_seqlen_k=None, block_table=None, **kwargs):
    import torch

    varlen_attn = _varlen()
    params = inspect.signature(varlen_attn).parameters
    if max_seqlen_q is None:  # newer transformers name these max_length_q / max_length_k
        max_seqlen_q, max_seqlen_k = kwargs.pop("max_length_q"), kwargs.pop("max_length_k")
    if block_table is not None:
        raise RuntimeError("torch-flash has no decode fast path; the engine should not hand it a block table")

    window = getattr(module, "sliding_window", None)
    sliding = bool(window)
    layer_type = "sliding_attention" if sliding else "full_attention"
    if isinstance(cu_seq_lens_k, dict):
        cu_seq_lens_k = cu_seq_lens_k[layer_type]
        max_seqlen_k = max_seqlen_k[layer_type]

    # [1, kv_heads, tokens, dim] -> [tokens_k, kv_heads, dim]
    k, v = cache.update(key_states=k, value_states=v, layer_idx=module.layer_idx,
                        read_index=kwargs["read_index"], write_index=kwargs["write_index"])
    query = q.transpose(1, 2).squeeze(0).contiguous()  # [tokens_q, heads, dim]
    k, v = k.contiguous(), v.contiguous()
    n_rep = query.shape[1] // k.shape[1]
    extra = {}
    if n_rep > 1:
        if "enable_gqa" in params:
            extra["enable_gqa"] = True
        else:
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    # causal, bottom-right aligned (q shorter than k during chunked prefill and decode), as flash-attn does
    if "window_size" in params:
        extra["window_size"] = ((window - 1) if sliding else -1, 0)
    elif sliding:
        raise RuntimeError("this torch's varlen_attn has no window_size: sliding-window layers are not supported")
    else:
        extra["is_causal"] = True
    out = varlen_attn(query, k, v, cu_seq_lens_q.to(torch.int32), cu_seq_lens_k.to(torch.int32).clone(),
                      int(max_seqlen_q), int(max_seqlen_k), scale=module.scaling, **extra)
    if isinstance(out, tuple):
        out = out[0]
    return out, None


def register() -> str:
    """Register the backend under the names transformers' CB engine dispatches to; return the name to load with."""
    import torch
    from transformers import AttentionInterface

    if not torch.cuda.is_available():
        raise RuntimeError("--attn torch-flash needs a CUDA GPU (PyTorch's FlashAttention varlen kernel is CUDA-only);"
                           " on CPU use --attn sdpa")
    _varlen()
    AttentionInterface.register(NAME, paged_torch_flash_forward)
    AttentionInterface.register(f"paged|{NAME}", paged_torch_flash_forward)
    return f"paged|{NAME}"
