"""A paged decode kernel with flash-attn's `flash_attn_with_kvcache` calling convention, in PyTorch operations.

transformers' continuous-batching decode fast path (`integrations/flash_paged.py::_paged_decode_forward` in 5.17,
`_flash_attention_forward` in later releases) hands a decode-only batch to `flash_attn_with_kvcache`: one new query
token per sequence, the layer's paged KV cache viewed as [num_blocks, block_size, kv_heads, head_dim], a block
table, and the cache length of each sequence before its new token. This function does what that kernel does: it
writes the new k/v into the cache in place at `cache_seqlens`, gathers each sequence's keys and values through its
block table and attends to them with a masked softmax (causal, optional left window, soft-cap and attention sink).

Every shape it uses comes from the tensors' shapes, never from their values: no host synchronisation, no `.item()`,
no data-dependent shape, so a CUDA graph can capture it and replay it with new block tables and lengths. The price is
that it always reads the full block-table width (`max_blocks_per_request * block_size` keys per sequence), which
transformers sizes from the workload. Padding rows (block table all -1, `cache_seqlens` -1, as transformers builds
them for a padded decode batch) attend to nothing and return zeros; their cache write is a no-op into the cache's
last block, which in transformers' cache layout is the write-trash block (a block id of -1 addresses it, as
negative indexing does).
"""

from __future__ import annotations


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, cache_seqlens=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, s_aux=None,
                            return_softmax_lse=False):
    """q: [batch, 1, heads, dim]; k_cache/v_cache: [num_blocks, block_size, kv_heads, dim] (written in place);
    k/v: [batch, 1, kv_heads, dim] or None; cache_seqlens: [batch] int32, the length before the new token;
    block_table: [batch, max_blocks] int32 padded with -1; window_size: (left, right), -1 for unbounded;
    s_aux: [heads] attention-sink logits or None. Returns [batch, 1, heads, dim] (and the log-sum-exp
    [batch, heads, 1] with return_softmax_lse)."""
    import torch

    if block_table is None or cache_seqlens is None:
        raise ValueError("paged_decode.flash_attn_with_kvcache needs block_table and cache_seqlens (paged cache only)")
    batch, q_len, heads, dim = q.shape
    if q_len != 1:
        raise ValueError(f"paged_decode.flash_attn_with_kvcache decodes one token per sequence, got {q_len}")
    if (k is None) != (v is None):
        raise ValueError("k and v must be given together")
    num_blocks, block_size, kv_heads, _ = k_cache.shape
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} kv heads")
    rep = heads // kv_heads
    max_blocks = block_table.shape[1]
    scale = dim ** -0.5 if softmax_scale is None else softmax_scale
    device = q.device

    table = block_table[:batch].to(torch.long)
    seqlens = cache_seqlens[:batch].to(torch.long)
    n_keys = seqlens + (1 if k is not None else 0)  # keys each query attends to, the new token included

    if k is not None:
        _write_new_tokens(k_cache, v_cache, k, v, table, seqlens, block_size, max_blocks)

    # Gather each sequence's blocks: [batch, max_blocks * block_size, kv_heads, dim]
    keys = k_cache[table].reshape(batch, max_blocks * block_size, kv_heads, dim)
    values = v_cache[table].reshape(batch, max_blocks * block_size, kv_heads, dim)

    pos = torch.arange(max_blocks * block_size, device=device)
    mask = pos[None, :] < n_keys[:, None]  # causal: the one query sits at the last position
    mask &= (table >= 0)[:, :, None].expand(batch, max_blocks, block_size).reshape(batch, -1)
    left = window_size[0] if window_size is not None else -1
    if left is not None and left >= 0:
        mask &= pos[None, :] >= (n_keys[:, None] - 1 - left)
    # `causal` and the right window change nothing here: no key lies to the right of the one query

    query = q.reshape(batch, kv_heads, rep, dim).float()
    scores = torch.einsum("bgrd,blgd->bgrl", query, keys.float()) * scale
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    if s_aux is not None:
        sink = s_aux.float().reshape(1, kv_heads, rep, 1).expand(batch, kv_heads, rep, 1)
        scores = torch.cat([scores, sink], dim=-1)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    probs = torch.exp(scores - lse)
    if s_aux is not None:
        probs = probs[..., :-1]
    has_keys = mask.any(dim=-1)[:, None, None, None]
    probs = torch.where(has_keys, probs, torch.zeros((), device=device, dtype=probs.dtype))
    # slots past a sequence's end hold whatever the cache held (torch.empty: possibly NaN), and 0 * NaN is NaN
    values = values.float().masked_fill(~mask[:, :, None, None], 0.0)
    out = torch.einsum("bgrl,blgd->bgrd", probs, values)
    out = out.reshape(batch, 1, heads, dim).to(q.dtype)
    if return_softmax_lse:
        return out, lse.reshape(batch, heads, 1)
    return out


def _write_new_tokens(k_cache, v_cache, k, v, table, seqlens, block_size: int, max_blocks: int) -> None:
    """Write each sequence's new k/v at position cache_seqlens through its block table, in place. Rows without a
    valid slot (padding: cache_seqlens < 0 or block id -1) rewrite the current value of a slot in the last block."""
    import torch

    num_blocks, _, kv_heads, dim = k_cache.shape
    offset = seqlens.clamp(min=0)
    block_pos = torch.div(offset, block_size, rounding_mode="floor")
    block = table.gather(1, block_pos.clamp(max=max_blocks - 1)[:, None]).squeeze(1)
    valid = (seqlens >= 0) & (block_pos < max_blocks) & (block >= 0)
    block = torch.where(valid, block, torch.full_like(block, num_blocks - 1))
    slot = block * block_size + offset % block_size
    for cache, new in ((k_cache, k), (v_cache, v)):
        flat = cache.view(num_blocks * block_size, kv_heads, dim)
        current = flat.index_select(0, slot)
        flat.index_copy_(0, slot, torch.where(valid[:, None, None], new[:, 0].to(flat.dtype), current))
