"""The decode-path positive control `decode-coarse`, applied to transformers' real ContinuousBatchingIOs class."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("transformers")


def test_decode_coarse_collapses_decode_keys_only(monkeypatch):
    from evalharness.engine.patches import io_class
    from evalharness.faults import FAULTS

    cls = io_class()
    monkeypatch.setattr(cls, "_get_graph_key", cls._get_graph_key)  # restored after the test
    original = cls._get_graph_key

    def io(use_block_table, num_q_tokens):  # transformers 5.17 reads max_seqlen_k, later ones max_length_k
        lengths = {"full_attention": 1024}
        return SimpleNamespace(use_block_table=use_block_table, num_q_tokens=num_q_tokens, max_kv_read=512,
                               max_seqlen_k=lengths, max_length_k=lengths)

    decode_keys = {original(io(True, n)) for n in (8, 16, 64)}
    assert len(decode_keys) == 3  # transformers keys each padded decode size apart
    varlen = io(False, 128)
    varlen_key = original(varlen)

    FAULTS["decode-coarse"].engine_patch()
    assert len({cls._get_graph_key(io(True, n)) for n in (8, 16, 64)}) == 1  # one graph for every decode size
    assert cls._get_graph_key(varlen) == varlen_key  # the varlen path keeps its keys
