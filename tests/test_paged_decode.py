"""The paged decode kernel (flash_attn_with_kvcache convention) against a per-sequence reference, on CPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from evalharness.engine.paged_decode import flash_attn_with_kvcache  # noqa: E402

BLOCK = 4


def _case(seqlens, heads=6, kv_heads=2, dim=8, max_blocks=5, num_blocks=24, seed=0, dtype=torch.float32):
    """Random cache, a block table that scatters each sequence's blocks (padded with -1), new tokens."""
    g = torch.Generator().manual_seed(seed)
    batch = len(seqlens)
    k_cache = torch.randn(num_blocks, BLOCK, kv_heads, dim, generator=g).to(dtype)
    v_cache = torch.randn(num_blocks, BLOCK, kv_heads, dim, generator=g).to(dtype)
    perm = torch.randperm(num_blocks - 2, generator=g).tolist()  # the last block stays free (transformers' trash)
    table = torch.full((batch, max_blocks), -1, dtype=torch.int32)
    for i, n in enumerate(seqlens):
        for b in range(-(-(n + 1) // BLOCK) if n >= 0 else 0):
            table[i, b] = perm.pop()
    q = torch.randn(batch, 1, heads, dim, generator=g).to(dtype)
    k = torch.randn(batch, 1, kv_heads, dim, generator=g).to(dtype)
    v = torch.randn(batch, 1, kv_heads, dim, generator=g).to(dtype)
    return q, k_cache, v_cache, k, v, torch.tensor(seqlens, dtype=torch.int32), table


def _reference(q, k_cache, v_cache, k, v, seqlens, table, scale, left=-1, softcap=0.0, s_aux=None):
    """One sequence at a time, in float64: write the new token, read positions 0..n through the table, attend."""
    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    batch, _, heads, dim = q.shape
    kv_heads = k_cache.shape[2]
    out = torch.zeros(batch, 1, heads, dim, dtype=torch.float64)
    for i in range(batch):
        n = int(seqlens[i])
        if n < 0:
            continue
        blk, off = int(table[i, n // BLOCK]), n % BLOCK
        k_cache[blk, off], v_cache[blk, off] = k[i, 0], v[i, 0]
        keys = torch.stack([k_cache[int(table[i, p // BLOCK]), p % BLOCK] for p in range(n + 1)]).double()
        vals = torch.stack([v_cache[int(table[i, p // BLOCK]), p % BLOCK] for p in range(n + 1)]).double()
        first = 0 if left < 0 else max(0, n - left)
        for h in range(heads):
            g = h // (heads // kv_heads)
            s = keys[first:, g] @ q[i, 0, h].double() * scale
            if softcap:
                s = softcap * torch.tanh(s / softcap)
            if s_aux is not None:
                s = torch.cat([s, s_aux[h].double().reshape(1)])
            p = torch.softmax(s, dim=0)
            if s_aux is not None:
                p = p[:-1]
            out[i, 0, h] = p @ vals[first:, g]
    return out, k_cache, v_cache


@pytest.mark.parametrize("kwargs", [{}, {"left": 3}, {"softcap": 2.0}, {"s_aux": True}])
def test_kernel_matches_reference_and_writes_the_new_token(kwargs):
    seqlens = [0, 3, 7, 12, 18, -1, -1]  # block boundaries, a full table row, and two padding rows
    q, k_cache, v_cache, k, v, lens, table = _case(seqlens)
    scale = 0.3
    s_aux = torch.randn(q.shape[2]) if kwargs.get("s_aux") else None
    left = kwargs.get("left", -1)
    ref, ref_k, ref_v = _reference(q, k_cache, v_cache, k, v, lens, table, scale, left=left,
                                   softcap=kwargs.get("softcap", 0.0), s_aux=s_aux)
    got = flash_attn_with_kvcache(q, k_cache, v_cache, k=k, v=v, cache_seqlens=lens, block_table=table,
                                  softmax_scale=scale, causal=True, window_size=(left, 0),
                                  softcap=kwargs.get("softcap", 0.0), s_aux=s_aux)
    assert got.shape == q.shape and got.dtype == q.dtype
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[5:], torch.zeros_like(got[5:])), "padding rows attend to nothing"
    # the cache now holds the new tokens where the reference wrote them, and nothing else changed
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)


def test_garbage_past_the_end_of_a_sequence_is_never_read():
    q, k_cache, v_cache, k, v, lens, table = _case([3, 17, -1])
    ref, _, _ = _reference(q, k_cache, v_cache, k, v, lens, table, 0.3)
    # every slot no sequence reads (past each end, unused blocks, the trash block) holds NaN, as torch.empty may
    readable = torch.zeros(k_cache.shape[:2], dtype=torch.bool)
    for i, n in enumerate(lens.tolist()):
        for p in range(n + 1):
            readable[int(table[i, p // BLOCK]), p % BLOCK] = True
    k_cache[~readable], v_cache[~readable] = float("nan"), float("nan")
    got = flash_attn_with_kvcache(q, k_cache, v_cache, k=k, v=v, cache_seqlens=lens, block_table=table,
                                  softmax_scale=0.3, causal=True)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_padding_rows_leave_the_cache_unchanged():
    q, k_cache, v_cache, k, v, lens, table = _case([-1, -1, -1])
    before_k, before_v = k_cache.clone(), v_cache.clone()
    flash_attn_with_kvcache(q, k_cache, v_cache, k=k, v=v, cache_seqlens=lens, block_table=table, causal=True)
    assert torch.equal(k_cache, before_k) and torch.equal(v_cache, before_v)


def test_without_new_tokens_it_attends_to_the_cache_as_is():
    q, k_cache, v_cache, k, v, lens, table = _case([5, 9])
    with_new = flash_attn_with_kvcache(q, k_cache, v_cache, k=k, v=v, cache_seqlens=lens, block_table=table,
                                       softmax_scale=0.5, causal=True)
    # the cache now holds the new tokens: reading lens + 1 positions without k/v gives the same attention
    as_is = flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=lens + 1, block_table=table,
                                    softmax_scale=0.5, causal=True)
    torch.testing.assert_close(as_is, with_new, rtol=0, atol=0)


def test_bf16_matches_the_reference_to_bf16_precision():
    q, k_cache, v_cache, k, v, lens, table = _case([2, 10, 17], dtype=torch.bfloat16)
    ref, _, _ = _reference(q, k_cache, v_cache, k, v, lens, table, 0.35)
    got = flash_attn_with_kvcache(q, k_cache, v_cache, k=k, v=v, cache_seqlens=lens, block_table=table,
                                  softmax_scale=0.35, causal=True)
    torch.testing.assert_close(got.double(), ref, rtol=2e-2, atol=2e-2)


def test_bad_calls_are_refused():
    q, k_cache, v_cache, k, v, lens, table = _case([1])
    with pytest.raises(ValueError, match="block_table"):
        flash_attn_with_kvcache(q, k_cache, v_cache, k=k, v=v, cache_seqlens=lens)
    with pytest.raises(ValueError, match="one token"):
        flash_attn_with_kvcache(q.expand(1, 2, *q.shape[2:]), k_cache, v_cache, cache_seqlens=lens, block_table=table)
