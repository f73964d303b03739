"""Verdicts on constructed runs: PASS, STALE_GRAPH, ACCURACY_DROP, FAIL, SKIPPED, and the exit code."""

from __future__ import annotations

import pytest

from evalharness.config import ModePlan
from evalharness.results import RunResult, Sample
from evalharness.verdict import (ACCURACY_DROP, EXIT_FINDINGS, EXIT_OK, FAIL, PASS, SKIPPED, STALE_GRAPH,
                                 Thresholds, decide, exit_code)

GRAPHS = (True, True)
NO_CUDA = "CUDA is not available: transformers turns CUDA graphs off, so no graph is captured"


def run(key, n=20, tokens=None, status="ok", sample_status=None, error=None, error_class=None):
    """A RunResult of n samples; sample i generates [i, i+1, i+2] unless `tokens` overrides some."""
    tokens = tokens or {}
    sample_status = sample_status or {}
    samples = []
    for i in range(n):
        st = sample_status.get(i, "ok")
        toks = tokens.get(i, [i, i + 1, i + 2]) if st == "ok" else []
        samples.append(Sample(index=i, status=st, token_ids=toks, text=" ".join(map(str, toks)),
                              error=None if st == "ok" else "request failed"))
    return RunResult(key=key, status=status, samples=samples, error=error, error_class=error_class)


def plan(mode="on", eff=GRAPHS, notes=None, fault=None):
    return ModePlan(mode=mode, max_bt=384, run=f"{mode}-run", twin=None if mode == "off" else f"{mode}-twin",
                    fault=fault, graphs_effective=eff, notes=list(notes or []))


def right(n, wrong=()):
    return [i not in set(wrong) for i in range(n)]


def test_pass_graph_mode_identical_to_twin():
    o = decide(plan(), run("r"), run("t"), right(20), run("off"), right(20))
    assert o.verdict == PASS
    assert (o.twin_mismatches, o.twin_compared, o.failed_requests) == (0, 20, 0)
    assert o.accuracy == 1.0 and o.delta_vs_off == 0.0 and o.p_value == 1.0
    assert o.accuracy_ci[1] == 1.0
    assert exit_code([o]) == EXIT_OK


def test_reference_mode_passes_without_twin_or_p_value():
    o = decide(plan("off", eff=(False, False)), run("off"), None, right(20, wrong=[1, 2]), run("off"),
               right(20, wrong=[1, 2]))
    assert o.verdict == PASS and o.reason == "reference run"
    assert o.twin_mismatches is None and o.p_value is None and o.delta_vs_off is None
    assert o.correct == 18 and o.accuracy == pytest.approx(0.9)


def test_stale_graph_on_any_token_difference():
    r = run("r", tokens={3: [3, 4, 99], 7: [7, 8]})  # a changed token and a shorter stream
    o = decide(plan(), r, run("t"), right(20), run("off"), right(20))
    assert o.verdict == STALE_GRAPH
    assert o.twin_mismatches == 2 and o.twin_compared == 20
    assert [(m.index, m.position) for m in o.comparison.mismatches] == [(3, 2), (7, 2)]
    assert "2/20" in o.reason and "sample 3 at token 2" in o.reason
    assert exit_code([o]) == EXIT_FINDINGS


def test_stale_graph_even_when_accuracy_is_unchanged_and_without_cuda():
    # a fault on CPU: the mode captures no graph, but its run still differs from its twin: flagged, not SKIPPED
    r = run("r", tokens={0: [0, 0, 0]})
    o = decide(plan(eff=(False, False), notes=[NO_CUDA], fault="perturb"), r, run("t"), right(20), run("off"),
               right(20))
    assert o.verdict == STALE_GRAPH and o.inject == "perturb"


def test_accuracy_drop_significant():
    off_correct = right(20)
    correct = right(20, wrong=range(10))  # lost 10 of 20, gained none: p = 2 / 2^10
    o = decide(plan(), run("r"), run("t"), correct, run("off"), off_correct)
    assert o.verdict == ACCURACY_DROP
    assert o.delta_vs_off == pytest.approx(-0.5)
    assert o.p_value == pytest.approx(2 / 1024)
    assert exit_code([o]) == EXIT_FINDINGS


def test_accuracy_drop_not_significant_passes():
    correct = right(20, wrong=[0, 1])  # lost 2: p = 0.5
    o = decide(plan(), run("r"), run("t"), correct, run("off"), right(20))
    assert o.verdict == PASS
    assert o.delta_vs_off == pytest.approx(-0.1) and o.p_value == pytest.approx(0.5)


def test_accuracy_drop_significant_but_smaller_than_min_drop_passes():
    n = 1000
    off_correct = right(n, wrong=range(500, 505))          # the run gains these 5
    correct = right(n, wrong=range(0, 30))                 # run loses 30, gains 5: delta -0.025
    o = decide(plan(), run("r", n=n), run("t", n=n), correct, run("off", n=n), off_correct,
               Thresholds(alpha=0.05, min_drop=0.05))
    assert o.p_value < 0.05 and o.delta_vs_off == pytest.approx(-0.025)
    assert o.verdict == PASS
    o2 = decide(plan(), run("r", n=n), run("t", n=n), correct, run("off", n=n), off_correct,
                Thresholds(alpha=0.05, min_drop=0.02))
    assert o2.verdict == ACCURACY_DROP


def test_alpha_is_configurable():
    correct = right(20, wrong=range(5))  # lost 5: p = 0.0625
    assert decide(plan(), run("r"), run("t"), correct, run("off"), right(20)).verdict == PASS
    o = decide(plan(), run("r"), run("t"), correct, run("off"), right(20), Thresholds(alpha=0.1))
    assert o.verdict == ACCURACY_DROP and o.p_value == pytest.approx(0.0625)


def test_accuracy_gain_is_not_a_drop():
    o = decide(plan(), run("r"), run("t"), right(20), run("off"), right(20, wrong=range(10)))
    assert o.verdict == PASS and o.delta_vs_off == pytest.approx(0.5)


@pytest.mark.parametrize("status,error_class", [("crash", "sigabrt"), ("timeout", "hang"), ("error", "load_error")])
def test_fail_when_the_run_died(status, error_class):
    r = run("r", status=status, sample_status={i: "missing" for i in range(5, 20)}, error="worker killed",
            error_class=error_class)
    o = decide(plan(), r, run("t"), right(20, wrong=range(5, 20)), run("off"), right(20))
    assert o.verdict == FAIL
    assert o.error_class == error_class
    assert o.failed_requests == 15
    assert o.reason.startswith(f"run: {error_class}: worker killed (15/20 ")
    # the samples that did finish were still compared with the twin
    assert o.twin_compared == 5 and o.twin_mismatches == 0
    assert exit_code([o]) == EXIT_FINDINGS
    # missing samples are not wrong answers: the accuracy is that of the 5 that finished, labelled so
    assert o.finished == 5 and o.accuracy == 1.0 and o.accuracy_ci[0] > 0.5
    assert o.accuracy_text() == "acc=1.000 (of 5/20 finished)"


def test_no_accuracy_when_no_sample_finished():
    r = run("r", status="timeout", sample_status={i: "missing" for i in range(20)}, error="no result",
            error_class="hang")
    o = decide(plan(), r, run("t"), [False] * 20, run("off"), right(20))
    assert o.verdict == FAIL and o.accuracy is None and o.accuracy_ci is None
    assert o.accuracy_text() == "acc=n/a (0/20 finished)"
    assert o.p_value == 1.0 and o.delta_vs_off is None  # nothing paired, nothing claimed


def test_fail_for_failed_requests_beats_stale_graph():
    r = run("r", status="failed_requests", sample_status={2: "failed"}, tokens={0: [9]}, error="request 2 failed",
            error_class="failed_requests")
    o = decide(plan(), r, run("t"), right(20, wrong=[2]), run("off"), right(20))
    assert o.verdict == FAIL and o.failed_requests == 1
    assert o.twin_mismatches == 1  # still reported


def test_fail_when_only_the_twin_failed():
    twin = run("t", status="crash", sample_status={i: "missing" for i in range(3, 20)}, error="worker killed by SIGSEGV",
               error_class="sigsegv")
    o = decide(plan(), run("r"), twin, right(20), run("off"), right(20))
    assert o.verdict == FAIL
    assert o.reason.startswith("twin: sigsegv:")
    assert o.error_class == "sigsegv"
    assert o.failed_requests == 0 and o.twin_failed_requests == 17


def test_off_failures_are_excluded_from_the_paired_test():
    off = run("off", sample_status={0: "failed", 1: "failed"})
    o = decide(plan(), run("r"), run("t"), right(20), off, right(20, wrong=[0, 1]))
    assert o.verdict == PASS
    assert o.delta_vs_off == 0.0  # the two failed off samples are not counted as gains


def test_skipped_when_unsupported():
    r = RunResult(key="r", status="unsupported", samples=[Sample(index=i, status="missing") for i in range(4)],
                  error="transformers 5.0 takes only a bool use_cuda_graph")
    o = decide(plan("varlen"), r, r, [False] * 4, run("off", n=4), right(4))
    assert o.verdict == SKIPPED and "only a bool" in o.reason
    assert exit_code([o]) == EXIT_OK


def test_skipped_without_cuda_gives_the_reason():
    r = run("twin")
    o = decide(plan(eff=(False, False), notes=[NO_CUDA]), r, r, right(20), run("off"), right(20))
    assert o.verdict == SKIPPED and o.reason == NO_CUDA
    assert o.twin_mismatches == 0  # the twin still ran and agreed
    assert exit_code([o]) == EXIT_OK


def test_skipped_never_hides_a_failure():
    r = run("twin", status="crash", sample_status={5: "missing"}, error="worker killed", error_class="sigkill")
    o = decide(plan(eff=(False, False), notes=[NO_CUDA]), r, r, right(20), run("off"), right(20))
    assert o.verdict == FAIL


def test_empty_run():
    o = decide(plan(), run("r", n=0), run("t", n=0), [], run("off", n=0), [])
    assert o.verdict == PASS
    assert o.n == 0 and o.accuracy is None and o.accuracy_ci is None
    assert o.delta_vs_off is None and o.p_value == 1.0


def test_exit_code_mixes():
    def oc(verdict):
        o = decide(plan(), run("r", n=1), run("t", n=1), [True], None, None)
        o.verdict = verdict
        return o

    assert exit_code([]) == EXIT_OK
    assert exit_code([oc(PASS), oc(SKIPPED)]) == EXIT_OK
    for finding in (STALE_GRAPH, ACCURACY_DROP, FAIL):
        assert exit_code([oc(PASS), oc(finding), oc(SKIPPED)]) == EXIT_FINDINGS
    assert EXIT_OK == 0 and EXIT_FINDINGS == 1


def test_verdict_enum_is_its_string_and_orders_checks_and_sweeps():
    import json

    from evalharness.verdict import Verdict, by_precedence, legend, worst

    assert json.dumps({"v": Verdict.STALE_GRAPH}) == '{"v": "STALE_GRAPH"}' and Verdict("FAIL") is FAIL
    assert f"{PASS:<6}|" == "PASS  |"
    # checks: FAIL before STALE_GRAPH before SKIPPED before ACCURACY_DROP; a sweep's worst cell: SKIPPED counts least
    order = [v.value for v in by_precedence()]
    assert order.index("FAIL") < order.index("STALE_GRAPH") < order.index("SKIPPED") < order.index("ACCURACY_DROP")
    assert worst(["SKIPPED", "PASS"]) == PASS and worst(["PASS", "ACCURACY_DROP", "STALE_GRAPH"]) == STALE_GRAPH
    assert {v for v in Verdict if v.finding} >= {FAIL, STALE_GRAPH, ACCURACY_DROP} and not PASS.finding
    assert all(v.value in legend() for v in Verdict)


def test_every_applicable_verdict_yields_to_the_one_first_in_precedence():
    # a run that differs from its twin AND lost accuracy significantly: STALE_GRAPH, not ACCURACY_DROP
    r = run("r", tokens={i: [0] for i in range(10)})
    o = decide(plan(), r, run("t"), right(20, wrong=range(10)), run("off"), right(20))
    assert o.verdict == STALE_GRAPH and o.p_value == pytest.approx(2 / 1024)


def captured(key, varlen, decode, **kw):
    r = run(key, **kw)
    r.meta = {"resolved": {"graphs_captured": {"varlen": varlen, "decode": decode}}}
    return r


def test_a_graph_mode_that_captured_no_graph_is_skipped_not_passed():
    """Recorded on the H200: Gemma 3's `decode` run (graphs on the decode path only) captured no graph at all, since
    transformers gives sliding-window models no decode fast path; equal to its twin, but its graphs were not tested."""
    o = decide(plan("decode", eff=(False, True)), captured("r", 0, 0), run("t"), right(20), run("off"), right(20))
    assert o.verdict == SKIPPED and "decode path" in o.reason and "sliding-window" in o.reason
    assert o.twin_mismatches == 0
    # the same run differing from its twin is still a finding
    bad = captured("r", 0, 0, tokens={2: [9]})
    assert decide(plan("decode", eff=(False, True)), bad, run("t"), right(20), run("off"), right(20)).verdict \
        == STALE_GRAPH


def test_a_graph_mode_with_graphs_on_one_of_its_paths_passes_with_a_note():
    o = decide(plan("on"), captured("r", 30, 0), run("t"), right(20), run("off"), right(20))
    assert o.verdict == PASS and any("decode path" in n for n in o.notes)
    o = decide(plan("on"), captured("r", 30, 16), run("t"), right(20), run("off"), right(20))
    assert o.verdict == PASS and not o.notes


def _meta(r, use_async=True, stale=0):
    r.meta = {"engine": {"use_async": use_async}, "stale_constants": {"total": stale, "replays_checked": 5,
                                                                      "first": [{"name": "max_seqlen_q", "captured": 1,
                                                                                 "needed": 2, "step": 1, "path": "varlen",
                                                                                 "key": [1, 2]}] if stale else []}}
    return r


@pytest.mark.parametrize("tokens, use_async, stale, noted", [
    ({5: [99, 6, 7]}, True, 0, True),                 # one sample, from its first token: the race's signature
    ({5: [5, 99, 7]}, True, 0, False),                # one sample, but later in its output
    ({5: [99, 6, 7], 9: [99, 10, 11]}, True, 0, False),  # two samples
    ({5: [99, 6, 7]}, True, 3, False),                # a stale launch constant explains it
    ({5: [99, 6, 7]}, False, 0, False),               # async batching off: no race to blame
])
def test_a_single_sample_differing_from_its_first_token_is_noted_as_the_reset_race_signature(tokens, use_async,
                                                                                            stale, noted):
    o = decide(plan(), _meta(run("r", tokens=tokens), use_async, stale), run("t"), right(20), run("off"), right(20))
    assert o.verdict == STALE_GRAPH  # the note never changes the verdict
    assert any("async reset race" in n and "sync-reset" in n for n in o.notes) == noted
    if noted:
        assert "only sample 5 differs" in " ".join(o.notes)


def test_a_run_that_generated_one_token_throughout_is_noted_as_degenerate():
    """A twin that generated token 0 at every position of every sample (NaN logits, as on the H200 in
    reports/h200-speed/decode-skip/) makes the graph run differ everywhere: the note names the broken run; a run
    whose samples repeat one token each, but not the same one, or a single sample, is not noted."""
    zeros = run("t", tokens={i: [0, 0, 0] for i in range(20)})
    o = decide(plan(), run("r"), zeros, right(20), run("off"), right(20))
    assert o.verdict == STALE_GRAPH and o.twin_mismatches == 20
    (note,) = [n for n in o.notes if "every position" in n]
    assert note.startswith("twin on-twin generated token 0 at every position of every sample")
    rerun = run("again", tokens={i: [7] * 4 for i in range(20)})
    o = decide(plan(), run("r"), run("t"), right(20), run("off"), right(20), others={"again": rerun})
    assert [n.split(" generated")[0] for n in o.notes if "every position" in n] == ["re-run again"]
    own_twin = ModePlan(mode="on", max_bt=384, run="same", twin="same", fault=None, graphs_effective=(False, False))
    assert len([n for n in decide(own_twin, zeros, zeros, right(20), None, None).notes if "every position" in n]) == 1
    each_own = run("r", tokens={i: [i] * 3 for i in range(20)})
    single = run("r", n=1, tokens={0: [5, 5, 5]})
    for r, twin in ((each_own, run("t")), (single, run("t", n=1))):
        n = len(r.samples)
        assert not [x for x in decide(plan(), r, twin, right(n), None, None).notes if "every position" in x]
