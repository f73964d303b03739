"""--audit on CPU: the worker-side hook drives the Auditor through a fake engine whose "graphs" bake the Python-int
launch constants of their capture, as CUDA graphs do, and replay them for any batch with the same graph key."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from evalharness.audit import Auditor, describe
from evalharness.engine import audit_hooks
from evalharness.engine.patches import PatchError


def kernel(lengths: list[int], max_seqlen_q: int, out: torch.Tensor) -> None:
    """A varlen kernel launched for max_seqlen_q query rows: a longer sequence's last token is never computed."""
    for i, n in enumerate(lengths):
        out[0, i] = n if n <= max_seqlen_q else -1


class FakeIO:
    def __init__(self, key_has_max_q: bool):
        self.graphs = SimpleNamespace(store={})
        self.graphs.get_graph = self.graphs.store.get
        self.key_has_max_q = key_has_max_q
        self.use_block_table = False
        self.compute_stream = None
        self.output_ids = torch.zeros(1, 8, dtype=torch.int32)
        self.requests_in_batch = []
        self.num_q_tokens = self.max_kv_read = self.max_seqlen_q = 0

    def _get_graph_key(self):
        base = (self.num_q_tokens, self.max_kv_read)
        return base + (self.max_seqlen_q,) if self.key_has_max_q else base

    def get_cb_kwargs(self):
        return None, self.output_ids, self.output_ids


class FakeRunner:
    """compute_batch as transformers' ModelRunner does it: eager, capture (warm-up + record), or replay."""

    def __init__(self, key_has_max_q: bool):
        self.inputs_and_outputs = FakeIO(key_has_max_q)

    def _get_forward_fn(self, use_block_table):
        return self._forward, True

    def _forward(self, model, batch, carry_over_ids, prev_output_ids, output_ids):
        kernel(batch["lengths"], batch["max_seqlen_q"], output_ids)

    def compute_batch(self, model, batch):
        io = self.inputs_and_outputs
        key = io._get_graph_key()
        graph = io.graphs.get_graph(key)
        if graph is None:
            baked = batch["max_seqlen_q"]  # a Python int: frozen into the captured launch
            io.graphs.store[key] = lambda b, out: kernel(b["lengths"], baked, out)
            self._forward(model, batch, None, io.output_ids, io.output_ids)
        else:
            graph(batch, io.output_ids)


def audited(auditor: Auditor) -> type:
    """A fresh FakeRunner subclass with the audit installed (installing patches the class it is given)."""
    cls = type("AuditedRunner", (FakeRunner,), {})
    audit_hooks.install(auditor, cls)
    return cls


def step(runner: FakeRunner, lengths: list[int], requests: list[str]):
    io = runner.inputs_and_outputs
    io.num_q_tokens, io.max_kv_read, io.max_seqlen_q = 64, 0, max(lengths)  # padded q size: same key for all
    io.requests_in_batch = [SimpleNamespace(state=SimpleNamespace(request_id=r)) for r in requests]
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    batch = {"lengths": lengths, "max_seqlen_q": max(lengths), "max_seqlen_k": max(lengths), "cu_seq_lens_q": cu,
             "logits_indices": torch.arange(len(lengths))}
    runner.compute_batch(None, batch)
    return io.output_ids[0, :len(lengths)].tolist()


def test_stale_replay_is_attributed_to_max_seqlen_q_and_the_graph_output_is_kept():
    auditor = Auditor()
    runner = audited(auditor)(key_has_max_q=False)  # the pre-#45323 bug: the key lacks the constant
    assert step(runner, [3, 5], ["req_0", "req_1"]) == [3, 5]  # capture
    tokens = step(runner, [7, 2], ["req_2", "req_3"])  # replay of a graph baked with max_seqlen_q=5
    assert tokens == [-1, 2], "the audit must not change what the engine continues with"
    first = auditor.first
    assert first is not None and first.path == "varlen" and tuple(first.key) == (64, 0)
    assert first.differing["max_seqlen_q"] == {"captured": 5, "replayed": 7}
    assert first.differing["max_seqlen_k"] == {"captured": {"full_attention": 5}, "replayed": {"full_attention": 7}}
    assert "num_q_tokens" not in first.differing and first.requests == ["req_2", "req_3"]
    assert first.mismatched_positions == [0]
    text = describe(auditor.to_json())
    assert "max_seqlen_q 5 at capture vs 7 at replay" in text and "varlen graph key (64, 0)" in text


def test_correct_keys_replay_without_findings_and_first_only_unless_all():
    auditor = Auditor()
    runner = audited(auditor)(key_has_max_q=True)  # the fix: max_seqlen is part of the key
    for lengths in ([3, 5], [7, 2], [4, 5], [2, 7]):
        step(runner, lengths, ["a", "b"])
    assert auditor.replays == 2 and auditor.captures == 2 and auditor.findings == []
    assert "none differed" in describe(auditor.to_json())

    stale_first, stale_all = Auditor(), Auditor(keep_all=True)
    for aud in (stale_first, stale_all):
        runner = audited(aud)(key_has_max_q=False)
        for lengths in ([3, 5], [7, 2], [9, 1]):
            step(runner, lengths, ["a", "b"])
    assert len(stale_all.findings) == 2 and stale_all.to_json()["mismatching_replays"] == 2
    assert len(stale_first.findings) == 1 and stale_first.first.differing["max_seqlen_q"]["replayed"] == 7
    # --audit stops re-running replays at the first mismatch; --audit-all re-runs every one
    assert stale_first.to_json()["replays_audited"] == 1 and stale_first.to_json()["replays_not_audited"] == 1
    assert stale_all.to_json()["replays_audited"] == 2 and stale_all.to_json()["replays_not_audited"] == 0


def test_each_finding_is_handed_over_as_it_happens():
    saved = []
    auditor = Auditor(keep_all=True, on_finding=saved.append)
    runner = audited(auditor)(key_has_max_q=False)
    step(runner, [3, 5], ["a", "b"])
    assert saved == []
    step(runner, [7, 2], ["a", "b"])
    assert len(saved) == 1 and saved[0]["first"]["differing"]["max_seqlen_q"] == {"captured": 5, "replayed": 7}
    step(runner, [9, 1], ["a", "b"])
    assert len(saved) == 2 and len(saved[1]["findings"]) == 2


def test_install_refuses_an_unknown_layout():
    with pytest.raises(PatchError, match="compute_batch"):
        audit_hooks.install(Auditor(), type("Runner", (), {}))
