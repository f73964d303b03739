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


def test_a_reproduced_mismatch_is_a_confirmed_stale_graph():
    plan, mp = plan_on()
    results = {mp.run: result(mp.run, STALE), mp.twin: result(mp.twin)}
    ran = run_round(plan, results, lambda cfg: STALE)
    assert len(ran) == 1 and plan.runs[ran[0]].attempt == 1 and ran[0] != mp.run
    assert dataclasses.replace(plan.runs[ran[0]], attempt=0) == plan.runs[mp.run]  # same configuration
    assert run_round(plan, results, lambda cfg: STALE) == []  # nothing more to run
    o = outcome(plan, mp, results)
    assert o.verdict == STALE_GRAPH and "confirmed: all 2 runs reproduce" in o.reason
    assert o.confirmation.status == confirm.CONFIRMED and o.confirmation.to_json()["runs_compared"] == 2


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
        run_round(plan, results, lambda cfg: {4: [4, 5, 0]})  # the re-run differs elsewhere
        ran = run_round(plan, results, lambda cfg: twin_again)
        assert ran == mp.twin_reruns and plan.runs[ran[0]].force_padding and plan.runs[ran[0]].attempt == 1
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
    key = next(iter(confirm.reruns_needed(plan, results)))
    results[key] = RunResult(key=key, status="crash", samples=[], error="killed", error_class="sigkill")
    o = outcome(plan, mp, results)
    assert o.verdict == "FAIL" and o.reason.startswith(f"re-run {key}: sigkill")


def test_constants_oracle_plans_no_twins():
    plan = plan_runs(["off", "on", "varlen"], [384], CUDA, oracle="constants")
    assert [mp.twin for mp in plan.modes] == [None, None, None] and len(plan.runs) == 3
    both = plan_runs(["off", "on", "varlen"], [384], CUDA, oracle="both")
    assert all(mp.twin for mp in both.modes[1:])
