"""`--attn torch-flash`: a flash-attn-compatible kernel module on PyTorch, plugged into transformers' own flash paths.

transformers' continuous-batching engine drives flash attention through two functions of a kernel module:
`flash_attn_varlen_func` (prefill and mixed batches) and `flash_attn_with_kvcache` (the decode fast path: block
table, in-place cache write, CUDA graphs per padded decode batch size). This module offers both with flash-attn's
calling convention:
- `flash_attn_varlen_func`: PyTorch's own FlashAttention varlen kernel (`torch.nn.attention.varlen.varlen_attn`,
  CUDA), which takes max_q / max_k as Python ints like flash-attn, so under CUDA graphs it exposes the same
  stale-launch-constant bug class; off CUDA a per-sequence reference in PyTorch operations (no graphs there);
- `flash_attn_with_kvcache`: `paged_decode.flash_attn_with_kvcache`, the paged decode kernel in PyTorch operations.

What is ours and what is transformers' (see README "torch-flash"): the attention *functions* registered under
`NAME` are transformers' own flash forwards (those it maps `flash_attention_2` to), so the cache update, the
varlen/decode dispatch and `_paged_decode_forward` are the engine's code under test. `NAME` matches transformers'
"flash attention 2 or 3" pattern, which is what enables the decode fast path. One patch remains: transformers finds
a flash kernel module only in flash-attn's packages or on the Hugging Face hub (`kernels`), so `install` wraps
`modeling_flash_attention_utils._lazy_imports` to answer with this module for `NAME`, as its hub-kernel fallback
would for a hub repository. Every other name goes to transformers unchanged.
"""

from __future__ import annotations

import functools
import inspect

from .paged_decode import flash_attn_with_kvcache

# transformers enables the decode fast path for names matching ".*flash.*2" or ".*flash.*3" (FA2/FA3's API); this
# module follows flash-attn 2's (`block_table`). No "/" in it, so transformers never looks it up on the hub.
NAME = "torch_flash2_evalharness"

__all__ = ["NAME", "flash_attn_varlen_func", "flash_attn_with_kvcache", "install", "register"]


def _varlen():
    import torch

    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError as e:  # pragma: no cover - depends on the torch build
        raise RuntimeError(f"--attn torch-flash needs torch.nn.attention.varlen (torch >= 2.10); torch "
                           f"{torch.__version__} lacks it") from e
    return varlen_attn


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, s_aux=None):
    """flash-attn's varlen call: q [tokens_q, heads, dim], k/v [tokens_k, kv_heads, dim]; causal masks align to the
    end of each key sequence (chunked prefill); window_size (left, right), -1 unbounded. Returns [tokens_q, heads,
    dim]."""
    if dropout_p:
        raise ValueError("torch-flash: no dropout (inference only)")
    if softcap or s_aux is not None:
        raise ValueError("torch-flash: soft-capping and attention sinks are not supported on the varlen path")
    left, right = window_size if window_size is not None else (-1, -1)
    if causal:
        right = 0
    if not q.is_cuda:
        return _varlen_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, left, right)
    import torch

    varlen_attn = _varlen()
    params = inspect.signature(varlen_attn).parameters
    extra = {}
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            extra["enable_gqa"] = True
        else:
            n_rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    if "window_size" in params:
        extra["window_size"] = (left, right)
    elif left >= 0 or (right >= 0 and not causal):
        raise RuntimeError("this torch's varlen_attn has no window_size: sliding-window layers are not supported")
    else:
        extra["is_causal"] = causal
    out = varlen_attn(q, k, v, cu_seqlens_q.to(torch.int32), cu_seqlens_k.to(torch.int32), int(max_seqlen_q),
                      int(max_seqlen_k), scale=softmax_scale, **extra)
    return out[0] if isinstance(out, tuple) else out


def _varlen_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, softmax_scale, left: int, right: int):
    """The varlen attention one sequence at a time (reads the lengths on the host: never under a CUDA graph)."""
    import torch

    out = torch.zeros_like(q)
    rep = q.shape[1] // k.shape[1]
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    for i in range(len(cq) - 1):
        qi, ki, vi = q[cq[i]:cq[i + 1]], k[ck[i]:ck[i + 1]], v[ck[i]:ck[i + 1]]
        n_q, n_k = qi.shape[0], ki.shape[0]
        if n_q == 0:
            continue
        ki, vi = ki.repeat_interleave(rep, dim=1), vi.repeat_interleave(rep, dim=1)
        scores = torch.einsum("qhd,khd->hqk", qi.float(), ki.float()) * scale
        q_pos = torch.arange(n_q)[:, None] + (n_k - n_q)  # bottom-right aligned
        k_pos = torch.arange(n_k)[None, :]
        allowed = torch.ones(n_q, n_k, dtype=torch.bool)
        if right >= 0:
            allowed &= k_pos <= q_pos + right
        if left >= 0:
            allowed &= k_pos >= q_pos - left
        scores = scores.masked_fill(~allowed.to(scores.device), float("-inf"))
        probs = torch.nan_to_num(torch.softmax(scores, dim=-1))
        out[cq[i]:cq[i + 1]] = torch.einsum("hqk,khd->qhd", probs, vi.float()).to(q.dtype)
    return out


def _hook_lazy_imports(mfau) -> None:
    """Make transformers' flash-kernel lookup answer with this module for NAME (idempotent)."""
    original = mfau._lazy_imports
    if getattr(original, "_evalharness", False):
        return

    @functools.wraps(original)
    def lazy_imports(implementation, *args, **kwargs):
        if implementation is not None and implementation.split("|")[-1] == NAME:
            return None, flash_attn_varlen_func, flash_attn_with_kvcache, mfau._pad_input, mfau._unpad_input
        return original(implementation, *args, **kwargs)

    lazy_imports._evalharness = True
    mfau._lazy_imports = lazy_imports


def install() -> str:
    """Register NAME with transformers' flash forwards and hook the kernel lookup; return the name to load with.
    Works on any device (the CUDA check is `register`'s): tests use it on CPU."""
    from transformers import AttentionInterface, modeling_flash_attention_utils
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    _hook_lazy_imports(modeling_flash_attention_utils)
    flash = ALL_ATTENTION_FUNCTIONS["flash_attention_2"]
    paged = ALL_ATTENTION_FUNCTIONS._global_mapping.get("paged|flash_attention_2", flash)
    AttentionInterface.register(NAME, flash)
    AttentionInterface.register(f"paged|{NAME}", paged)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"])
    ALL_MASK_ATTENTION_FUNCTIONS.register(f"paged|{NAME}", ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"])
    from .transformers_cb import picks_attention

    # 5.19+ takes a flash implementation by its name (`paged|` is a deprecated alias it strips); before, `paged|NAME`
    return NAME if picks_attention() else f"paged|{NAME}"


def register() -> str:
    """The worker's entry point for --attn torch-flash: CUDA only (the varlen kernel is)."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("--attn torch-flash needs a CUDA GPU (PyTorch's FlashAttention varlen kernel is CUDA-only);"
                           " on CPU use --attn sdpa")
    _varlen()
    return install()

