"""Confirmation on constructed runs: which re-runs are asked for, and what the runs of one configuration show."""

from __future__ import annotations

import dataclasses

from evalharness import confirm
from evalharness.config import Capabilities, plan_runs
from evalharness.results import RunResult, Sample
from evalharness.verdict import NONDETERMINISTIC, PASS, STALE_GRAPH, decide

CUDA = Capabilities(cuda=True, attn="sdpa")


def result(key, tokens=None, n=6):
    tokens = tokens or {}
    return RunResult(key=key, status="ok", samples=[
        Sample(index=i, status="ok", token_ids=tokens.get(i, [i, i + 1, i + 2]), text=str(i)) for i in range(n)])


def plan_on(repeat=1):
    plan = plan_runs(["on"], [384], CUDA, repeat=repeat)
    return plan, plan.modes[0]


def run_round(plan, results, outputs):
    """Give every needed re-run the output `outputs(config)`; returns the keys that ran."""
    needed = confirm.reruns_needed(plan, results)
    for key, cfg in needed.items():
        results[key] = result(key, outputs(cfg))
    return list(needed)


STALE = {2: [2, 9, 9]}  # sample 2 differs from the twin at token 1


def outcome(plan, mp, results):
    return decide(mp, results[mp.run], results[mp.twin], [True] * 6, None, None,
                  confirmation=confirm.confirm(mp, plan, results),
                  others={k: results[k] for k in (*mp.graph_runs[1:], *mp.twin_reruns)})


def test_a_clean_run_needs_no_rerun():
    plan, mp = plan_on()
    results = {mp.run: result(mp.run), mp.twin: result(mp.twin)}
    assert confirm.reruns_needed(plan, results) == {}
    o = outcome(plan, mp, results)
    assert o.verdict == PASS and o.confirmation is None and len(plan.runs) == 2


def graph_only(tokens):
    """Outputs for run_round: `tokens` from graph runs, the twin's own tokens from its re-runs (a sound twin)."""
    return lambda cfg: {} if cfg.force_padding else tokens


def test_a_reproduced_mismatch_is_a_confirmed_stale_graph_once_the_twin_reproduces_itself():
    plan, mp = plan_on()
    results = {mp.run: result(mp.run, STALE), mp.twin: result(mp.twin)}
    ran = run_round(plan, results, graph_only(STALE))
    # one round: the graph run and the twin again, side by side
    assert ran == [*mp.reruns, *mp.twin_reruns] and len(ran) == 2 and mp.run not in ran and mp.twin not in ran
    rerun, twin_rerun = (plan.runs[k] for k in ran)
    assert dataclasses.replace(rerun, attempt=0) == plan.runs[mp.run]  # same configuration
    assert dataclasses.replace(twin_rerun, attempt=0) == plan.runs[mp.twin] and twin_rerun.attempt == 1
    assert run_round(plan, results, graph_only(STALE)) == []  # nothing more to run
    o = outcome(plan, mp, results)
    assert o.verdict == STALE_GRAPH and "confirmed: all 2 runs reproduce" in o.reason
    assert "the twin's re-run reproduces the twin" in o.reason
    assert o.confirmation.status == confirm.CONFIRMED and o.confirmation.to_json()["runs_compared"] == 2


def test_graph_runs_that_agree_against_a_twin_that_does_not_reproduce_are_never_stale():
    """What the H200 showed (reports/h200-speed/decode-skip/): the twin generated garbage once; the graph run and
    its re-run agreed with each other (and with the twin's re-run), so without the twin's re-run the difference
    would have been confirmed as a stale graph."""
    plan, mp = plan_on()
    garbage = {i: [0, 0, 0] for i in range(6)}
    results = {mp.run: result(mp.run), mp.twin: result(mp.twin, garbage)}
    run_round(plan, results, lambda cfg: {})  # every re-run, the twin's too, gives the sound output
    assert run_round(plan, results, lambda cfg: {}) == []
    o = outcome(plan, mp, results)
    assert o.confirmation.status == confirm.TWIN_NOT_REPRODUCIBLE and o.verdict == NONDETERMINISTIC
    assert "twin is not reproducible" in o.reason and o.verdict != STALE_GRAPH


def test_repeats_that_agree_still_bring_the_twin_again():
    plan, mp = plan_on(repeat=2)
    results = {mp.run: result(mp.run, STALE), mp.twin: result(mp.twin), mp.repeats[0]: result(mp.repeats[0], STALE)}
    ran = run_round(plan, results, graph_only(STALE))
    assert ran == mp.twin_reruns and mp.reruns == []  # two runs already: only the twin is re-run
    assert outcome(plan, mp, results).verdict == STALE_GRAPH


def test_modes_sharing_a_twin_share_its_rerun():
    plan = plan_runs(["on", "varlen"], [384], CUDA)
    on, varlen = plan.modes
    assert on.twin == varlen.twin
    results = {on.run: result(on.run, STALE), varlen.run: result(varlen.run, STALE), on.twin: result(on.twin)}
    needed = confirm.reruns_needed(plan, results)
    assert on.twin_reruns == varlen.twin_reruns and len([k for k in needed if plan.runs[k].force_padding]) == 1


def test_a_rerun_equal_to_the_twin_is_nondeterministic_with_both_first_tokens():
    plan, mp = plan_on()
    results = {mp.run: result(mp.run, STALE), mp.twin: result(mp.twin)}
    run_round(plan, results, lambda cfg: {})
    o = outcome(plan, mp, results)
    assert o.verdict == NONDETERMINISTIC and o.confirmation.status == confirm.NOT_REPRODUCED
    assert "1 of 2 runs" in o.reason and "sample 2 token 1 (9 vs twin 3)" in o.reason
    assert "identical to the twin" in o.reason
    runs = o.confirmation.to_json()["runs"]
    assert [r["mismatches"] for r in runs] == [1, 0]
    assert runs[0]["first_mismatches"] == [{"index": 2, "token": 1, "run_token": 9, "twin_token": 3}]


def test_runs_that_differ_unalike_bring_a_twin_rerun_and_an_unsound_twin_is_never_stale():
    for twin_again, reason in (({}, "not alike"), ({0: [7]}, "twin is not reproducible")):
        plan, mp = plan_on()
        results = {mp.run: result(mp.run, STALE), mp.twin: result(mp.twin)}
        ran = run_round(plan, results, lambda cfg: twin_again if cfg.force_padding else {4: [4, 5, 0]})
        assert mp.twin_reruns and set(mp.twin_reruns) < set(ran)  # the re-run differs elsewhere; the twin again
        assert plan.runs[mp.twin_reruns[0]].force_padding and plan.runs[mp.twin_reruns[0]].attempt == 1
        assert run_round(plan, results, lambda cfg: {}) == []
        o = outcome(plan, mp, results)
        assert o.verdict == NONDETERMINISTIC and reason in o.reason


def test_repeats_are_distinct_jobs_and_count_without_a_rerun():
    plan, mp = plan_on(repeat=3)
    assert len(mp.repeats) == 2 and len({mp.run, *mp.repeats}) == 3
    assert [plan.runs[k].attempt for k in mp.graph_runs] == [0, 1, 2]
    assert plan.runs[mp.run].key() == plan_on()[0].modes[0].run  # attempt 0 keeps its key (and cache)
    results = {mp.run: result(mp.run, STALE), mp.twin: result(mp.twin),
               **{k: result(k) for k in mp.repeats}}  # flaky: only the first run is off
    assert confirm.reruns_needed(plan, results) == {}
    o = outcome(plan, mp, results)
    assert o.verdict == NONDETERMINISTIC and "1 of 3 runs" in o.reason
    assert o.confirmation.matched == 2


def test_a_failed_rerun_fails_the_cell():
    plan, mp = plan_on()
    results = {mp.run: result(mp.run, STALE), mp.twin: result(mp.twin)}
    key, twin_key = confirm.reruns_needed(plan, results)
    results[key] = RunResult(key=key, status="crash", samples=[], error="killed", error_class="sigkill")
    results[twin_key] = result(twin_key)
    o = outcome(plan, mp, results)
    assert o.verdict == "FAIL" and o.reason.startswith(f"re-run {key}: sigkill")


def test_constants_oracle_plans_no_twins():
    plan = plan_runs(["off", "on", "varlen"], [384], CUDA, oracle="constants")
    assert [mp.twin for mp in plan.modes] == [None, None, None] and len(plan.runs) == 3
    both = plan_runs(["off", "on", "varlen"], [384], CUDA, oracle="both")
    assert all(mp.twin for mp in both.modes[1:])
