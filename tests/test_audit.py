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


# --- the stale-constant check: transformers' IO contract (get_model_kwargs, get_graph, set_graph) with baked constants

class FakeCBIO:
    """ContinuousBatchingIOs as a graph run uses it: get_model_kwargs computes the batch's (padded) launch constants on
    the host; get_graph/set_graph look graphs up by _get_graph_key. Sliding-window layers see at most 4 keys."""

    def __init__(self, key_has_max_q: bool):
        self.graphs, self.key_has_max_q, self.use_block_table = {}, key_has_max_q, False
        self.out = torch.zeros(1, 8, dtype=torch.int32)

    def prepare(self, lengths: list[int]) -> None:
        self.lengths, self.num_q_tokens, self.max_kv_read, self.max_seqlen_q = lengths, 64, 0, max(lengths)

    def get_model_kwargs(self, use_padding: bool = False) -> dict:
        return {"max_seqlen_q": self.max_seqlen_q,
                "max_seqlen_k": {"full_attention": max(self.lengths), "sliding_attention": min(max(self.lengths), 4)},
                "cu_seq_lens_q": torch.zeros(9, dtype=torch.int32), "input_ids": torch.zeros(1, self.num_q_tokens),
                "read_index": [torch.zeros(0)], "cache": object(), "lengths": None}

    def _get_graph_key(self):
        base = (self.num_q_tokens, self.max_kv_read)
        return base + (self.max_seqlen_q,) if self.key_has_max_q else base

    def get_graph(self):
        return self.graphs.get(self._get_graph_key())

    def set_graph(self, graph) -> None:
        self.graphs[self._get_graph_key()] = graph


def checked(check):
    cls = type("CheckedIO", (FakeCBIO,), {})
    audit_hooks.install_constant_check(check, cls)
    return cls


def cb_step(io: FakeCBIO, lengths: list[int]) -> list[int]:
    """ModelRunner.compute_batch's graph branch: replay the key's graph, or capture one that bakes max_seqlen_q."""
    io.prepare(lengths)
    batch = io.get_model_kwargs(use_padding=True)
    graph = io.get_graph()
    if graph is None:
        baked = batch["max_seqlen_q"]
        graph = lambda ls: kernel(ls, baked, io.out)  # noqa: E731
        io.set_graph(graph)
    graph(lengths)
    return io.out[0, :len(lengths)].tolist()


def test_a_replay_with_another_max_seqlen_q_is_found_and_named():
    from evalharness.audit import ConstantCheck, describe_constants

    saved = []
    check = ConstantCheck(on_finding=saved.append)
    io = checked(check)(key_has_max_q=False)  # the pre-#45323 key: no max_seqlen in it
    cb_step(io, [3, 5])
    assert check.captures == 1 and check.total == 0
    assert cb_step(io, [7, 2]) == [-1, 2]  # the check changes nothing the engine computes
    found = {f["name"]: f for f in check.first}
    assert set(found) == {"max_seqlen_q", "max_seqlen_k[full_attention]"}  # sliding_attention: 4 both times
    assert found["max_seqlen_q"] == {"key": [64, 0], "path": "varlen", "step": 2, "name": "max_seqlen_q",
                                     "captured": 5, "needed": 7}
    assert found["max_seqlen_k[full_attention]"]["captured"] == 5 and len(saved) == 1
    text = describe_constants(check.to_json())
    assert "max_seqlen_q (1)" in text and "max_seqlen_q captured 5, needed 7" in text
    for lengths in ([9, 1],) * 11:  # every stale replay is counted; the first few are kept
        cb_step(io, lengths)
    j = check.to_json()
    assert j["replays_checked"] == 12 and j["stale_replays"] == 12 and j["total"] == 24 and len(j["first"]) == 10


def test_equal_constants_give_no_finding_and_each_io_keeps_its_own_captures():
    from evalharness.audit import ConstantCheck, describe_constants

    check = ConstantCheck()
    cls = checked(check)
    a, b = cls(key_has_max_q=True), cls(key_has_max_q=True)  # async batching: two IOs, each with its graphs
    for lengths in ([3, 5], [5, 1], [2, 5], [7, 2], [7, 7]):
        cb_step(a, lengths)
    cb_step(b, [2, 7])
    assert (check.captures, check.replays_checked, check.total) == (3, 3, 0)
    assert "every launch constant as at capture" in describe_constants(check.to_json())


def test_a_stale_constant_is_a_verdict_and_a_field_on_a_stale_graph():
    from evalharness.config import ModePlan
    from evalharness.results import RunResult, Sample
    from evalharness.verdict import STALE_CONSTANT, STALE_GRAPH, decide

    finding = {"key": [64, 0], "path": "varlen", "step": 2, "name": "max_seqlen_q", "captured": 5, "needed": 7}
    meta = {"stale_constants": {"captures": 1, "replays_checked": 3, "stale_replays": 1, "total": 1,
                                "names": {"max_seqlen_q": 1}, "first": [finding]}}

    def run(key, tokens):
        return RunResult(key=key, status="ok", meta=meta, samples=[Sample(index=0, status="ok", token_ids=tokens)])

    mp = ModePlan("varlen", 384, "r", "t", None, (True, False))
    o = decide(mp, run("r", [1, 2]), run("t", [1, 2]), [True], None, None)
    assert o.verdict == STALE_CONSTANT and "max_seqlen_q captured 5, needed 7 at step 2" in o.reason
    o = decide(mp, run("r", [1, 3]), run("t", [1, 2]), [True], None, None)
    assert o.verdict == STALE_GRAPH and o.stale_constants["first"] == [finding]
