"""The committed H200 reset-race evidence (reports/h200-race/) is what the recorded tokens say.

transformers 5.17's start-of-run async reset race (reports/h200-sweep/SAMPLE66.md, reports/h200-repeat/ANALYSIS.md),
forced (`reset-late`), fixed (`sync-reset`) and, on Gemma 3, with async batching on and off. Every cell is re-derived
with the harness's own pure code from the recorded tokens (samples.jsonl.xz: first runs, twins and references;
extra-runs.jsonl.xz: the --repeat runs and confirmation re-runs, whose keys are recomputed here from the engine
configuration): the twin comparison, the confirmation re-run (asked for exactly where one run differed), the
confirmation, the repeat count, and the verdict with its reason and notes. Then the README's conclusions, each from the tokens.
Two device sessions: the first (logs/) forced, fixed on SmolLM2 and switched async off on Gemma 3; the second
(logs/2026-11-30-0223/) ran the fix on Gemma 3 (gemma-race-fix) and the timing probe at SmolLM2's 640 (smol-race-probe),
whose per-run patch records (meta.json's "patch", repeats included) are in each folder's patches.json."""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import lzma
import re
from collections import defaultdict
from types import SimpleNamespace

import pytest

from evalharness.config import MODES, EngineConfig, ModePlan, Plan
from evalharness.confirm import confirm
from evalharness.stats import mcnemar_exact
from evalharness.summary import _repeats
from evalharness.twin import compare_twin, paired_on_finished
from evalharness.verdict import Thresholds, decide
from test_gpu_evidence import REPORTS, extra_runs
from test_gpu_evidence import load as evidence

RACE = REPORTS / "h200-race"
# each scenario's budgets (reports/h200-session.sh), all with LIMIT=128 questions
BUDGETS = {"smol-race-force": {256, 384, 640, 768}, "smol-race-fix": {384, 512, 896, 1024},
           "gemma-race-force": {256, 384, 512}, "gemma-async": {384, 512},
           "gemma-race-fix": {384, 512}, "smol-race-probe": {640}}
SMOL_FIRST = 66  # SmolLM2's first scheduled request (prefix sharing sorts the prompts); Gemma 3's is sample 0


@functools.lru_cache(maxsize=None)
def load(scenario: str):
    """summary, first runs and twins by (engine, axes, max_bt, mode, twin) (gemma-async's cells differ in their axes
    only), their sample rows, and the scenario's other runs by key."""
    summary, runs, rows = evidence(f"h200-race/{scenario}", by=("engine", "axes", "max_bt", "mode", "twin"))
    return summary, runs, rows, extra_runs(RACE / scenario)


def _config(summary: dict, key: str, **change) -> EngineConfig:
    return dataclasses.replace(EngineConfig.from_json(summary["runs"][key]["engine"]), **change)


def derive(scenario: str, cell: dict) -> SimpleNamespace:
    """The cell as the harness decides it from the recorded runs: mode plan (repeats and the re-runs confirmation
    asks for), confirmation, repeat count and outcome (verdict, reason, notes)."""
    summary, runs, rows, extra = load(scenario)
    key = (cell["engine"], cell["axes"], cell["max_bt"], cell["mode"])
    run, samples = runs[(*key, False)], rows[(*key, False)]
    assert {s["run"] for s in samples} == {cell["run"]} and _config(summary, cell["run"]).key() == cell["run"]
    correct = [bool(s["correct"]) for s in samples]
    off = (*key[:3], "off", False)
    off_correct = [bool(s["correct"]) for s in rows[off]]
    twin = runs[(*key, True)] if cell["twin"] else None
    results = {**extra, cell["run"]: run}
    plan = Plan(runs={cell["run"]: _config(summary, cell["run"])}, modes=[])
    repeat = json.loads((RACE / scenario / "settings.json").read_text())["settings"]["verdict"]["repeat"]
    mp = ModePlan(mode=cell["mode"], max_bt=cell["max_bt"], run=cell["run"], twin=cell["twin"], fault=cell["inject"],
                  graphs_effective=MODES[cell["mode"]], engine=cell["engine"])
    if twin is not None:
        results[cell["twin"]] = twin
        assert plan.add(_config(summary, cell["twin"])) == cell["twin"]
        mp.repeats = [plan.add(_config(summary, cell["run"], attempt=i)) for i in range(1, repeat)]
        plan.modes.append(mp)
        # the confirmation re-run: asked for when the one run of a configuration differs from its twin, as the next
        # attempt of that configuration. These recordings predate the rule that also re-runs the twin whenever no graph
        # run equals it (confirm.py), so they hold no twin re-run: the runs are taken as recorded, not re-planned.
        recorded = cell["confirmation"] or {"runs": [], "twin_reruns": []}
        mp.reruns = [r["run"] for r in recorded["runs"] if r["role"] == "re-run"]
        mp.twin_reruns = [r["run"] for r in recorded["twin_reruns"]]
        assert mp.reruns == ([_config(summary, cell["run"], attempt=repeat).key()]
                             if repeat == 1 and compare_twin(run, twin).count else [])
        for k in mp.reruns + mp.twin_reruns:
            assert plan.add(_config(summary, k)) == k and k in extra
    conf = confirm(mp, plan, results) if twin is not None else None
    meta = {"engine": {"use_async": summary["runs"][cell["run"]]["engine"]["use_async"]},
            "stale_constants": cell["constant_check"], "resolved": cell["resolved_engine"]}
    others = {k: results[k] for k in mp.repeats + mp.reruns + mp.twin_reruns}
    outcome = decide(mp, dataclasses.replace(run, meta=meta), twin, correct, runs[off], off_correct,
                     Thresholds(**summary["thresholds"]), conf, others)
    repeats = _repeats(SimpleNamespace(cell_id=mp.cell_id, confirmation=conf), plan) if twin is not None else None
    return SimpleNamespace(mp=mp, run=run, twin=twin, results=results, confirmation=conf, repeats=repeats,
                           outcome=outcome, off=runs[off], correct=correct, off_correct=off_correct)


def _cells(scenario: str) -> dict[tuple, dict]:
    return {(c["axes"], c["max_bt"], c["mode"]): c for c in load(scenario)[0]["cells"]}


@pytest.mark.parametrize("scenario", sorted(BUDGETS))
def test_cells_follow_from_the_recorded_tokens(scenario):
    summary, _, rows, extra = load(scenario)
    assert summary["n"] == 128 and set(summary["max_bts"]) == BUDGETS[scenario]
    assert {c["max_bt"] for c in summary["cells"]} == BUDGETS[scenario]
    used = set()
    for cell in summary["cells"]:
        d = derive(scenario, cell)
        assert d.run.failed == cell["failed_requests"] == 0
        assert sum(d.correct) / len(d.correct) == pytest.approx(cell["accuracy"])
        if d.twin is not None:
            cmp = compare_twin(d.run, d.twin)
            assert (cmp.count, cmp.compared) == (cell["twin_mismatches"], cell["twin_compared"])
            assert [[m.index, m.position] for m in cmp.mismatches[:5]] == \
                   [[m["index"], m["token"]] for m in cell["first_mismatches"]]
            pc = paired_on_finished(d.off, d.run, d.off_correct, d.correct)
            assert mcnemar_exact(pc.only_a, pc.only_b) == pytest.approx(cell["p_value"])
        assert (d.confirmation.to_json() if d.confirmation else None) == cell["confirmation"]
        assert d.repeats == cell["repeats"]
        assert (d.outcome.verdict, d.outcome.reason, d.outcome.notes) == \
               (cell["verdict"], cell["reason"], cell["notes"])
        used |= set(d.mp.repeats + d.mp.reruns + d.mp.twin_reruns)
    assert used == set(extra)  # extra-runs.jsonl.xz holds exactly the runs the cells need


def _sample(run, index: int) -> list[int]:
    return run.samples[index].token_ids


def _graph_runs(d) -> list:
    return [d.results[k] for k in d.mp.graph_runs]


def test_the_forced_race_loses_sample_66_from_its_first_token_and_matches_the_recorded_hits():
    """smol-race-force (`reset-late` on decode): every graph run, and its confirmation re-run, differs from the twin in
    sample 66 alone, from its first token, with the same tokens both times. At 384 those are the clean sweep's
    sample-66 tokens in `on` 384 (all 128), at 256 transformers 5.5.4's in `on` 256: the forced race reproduces
    the hits the sweep recorded. SAMPLE66.md's predicted first tokens held at 256, 384 and 768, not at 640."""
    predicted = {256: [33, 32, 198], 384: [33, 32, 45], 640: [7812, 37, 7812], 768: [216, 33, 28]}
    forced = {}
    for (_, bt, mode), cell in _cells("smol-race-force").items():
        d = derive("smol-race-force", cell)
        if mode == "off":
            continue
        assert cell["verdict"] == "STALE_GRAPH" and d.confirmation.status == "confirmed" and len(d.mp.graph_runs) == 2
        assert d.outcome.notes and "reset race" in d.outcome.notes[0]
        tokens = set()
        for r in _graph_runs(d):
            cmp = compare_twin(r, d.twin)
            assert [(m.index, m.position) for m in cmp.mismatches] == [(SMOL_FIRST, 0)]
            tokens.add(tuple(_sample(r, SMOL_FIRST)))
        assert len(tokens) == 1
        forced[bt] = list(tokens.pop())
    assert {bt: t[:3] for bt, t in forced.items()} == \
           {256: [33, 32, 198], 384: [33, 32, 45], 640: [33, 32, 30], 768: [216, 33, 28]}
    assert [bt for bt in sorted(forced) if forced[bt][:3] == predicted[bt]] == [256, 384, 768]
    # the clean sweep's sample 66 in each graph run (reports/h200-sweep/sweep-ab, 128 new tokens like these runs)
    sweep = {}
    with lzma.open(REPORTS / "h200-sweep" / "sweep-ab" / "samples.jsonl.xz", "rt", encoding="utf-8") as f:
        for line in f:
            if f'"index": {SMOL_FIRST},' in line:
                r = json.loads(line)
                if r["index"] == SMOL_FIRST and not r["twin"]:
                    sweep[(r["engine"], r["max_bt"], r["mode"])] = r["token_ids"]
    same = {k for k, t in sweep.items() for bt, f in forced.items() if t == f}
    assert same == {("main", 384, "on"), ("old", 256, "on")}
    assert forced[384] == sweep[("main", 384, "on")] and forced[256] == sweep[("old", 256, "on")]
    assert forced[640] != sweep[("old", 640, "on")][:len(forced[640])]  # 5.5.4's hit at 640: other tokens


def test_sync_reset_leaves_every_run_equal_to_its_twin_where_the_sweep_was_hit():
    """smol-race-fix (`sync-reset` in every mode, twins included, --repeat 3): every graph run of every cell equals
    its twin, at the budgets of every clean sweep cell that sample 66 flagged."""
    cells = _cells("smol-race-fix")
    sweep = json.loads((REPORTS / "h200-sweep" / "sweep-ab" / "summary.json").read_text())
    hit = {(c["max_bt"], c["mode"]) for c in sweep["cells"]
           if c["engine"] == "main" and c["mode"] in ("on", "decode") and c["verdict"] != "PASS"}
    assert len(hit) == 5 and hit <= {(bt, mode) for (_, bt, mode) in cells}
    graph = 0
    for (_, bt, mode), cell in cells.items():
        d = derive("smol-race-fix", cell)
        assert d.outcome.verdict == "PASS" and cell["inject"] == "sync-reset"
        if mode == "off":
            continue
        assert d.repeats == {"runs": 3, "matched": 3} and len(d.mp.graph_runs) == 3
        assert all(compare_twin(r, d.twin).count == 0 for r in _graph_runs(d))
        graph += 1
    assert graph == 8


def test_gemma_forced_race_is_the_recorded_nondeterministic_first_token_and_async_off_removes_it():
    """gemma-race-force (`reset-late` on varlen): sample 0 alone differs, confirmed; at 384 and 512 from its first token,
    with the very tokens of every gemma-async run that differed with async on (and of reports/h200-repeat/'s);
    at 256 from its third token. gemma-async: with async on, runs of one configuration differ (NONDETERMINISTIC, each
    differing run in sample 0 at token 0); with async off, all 4 runs equal the twin at both budgets."""
    forced = {}
    for (_, bt, mode), cell in _cells("gemma-race-force").items():
        if mode == "off":
            continue
        d = derive("gemma-race-force", cell)
        assert d.outcome.verdict == "STALE_GRAPH" and d.confirmation.status == "confirmed"
        tokens = set()
        for r in _graph_runs(d):
            cmp = compare_twin(r, d.twin)
            assert [(m.index, m.position) for m in cmp.mismatches] == [(0, 0 if bt > 256 else 2)]
            tokens.add(tuple(_sample(r, 0)))
        assert len(tokens) == 1
        forced[bt] = list(tokens.pop())
    assert forced[384] == forced[512] != forced[256]

    differing = 0
    for (axes, bt, mode), cell in _cells("gemma-async").items():
        if mode == "off":
            continue
        d = derive("gemma-async", cell)
        runs = _graph_runs(d)
        assert len(runs) == 4 and d.repeats["runs"] == 4
        if axes.endswith("async=off"):
            assert d.outcome.verdict == "PASS" and d.repeats["matched"] == 4
            assert all(compare_twin(r, d.twin).count == 0 for r in runs)
            continue
        assert d.outcome.verdict == "NONDETERMINISTIC" and 0 < d.repeats["matched"] < 4
        for r in runs:
            cmp = compare_twin(r, d.twin)
            if cmp.count:
                assert [(m.index, m.position) for m in cmp.mismatches] == [(0, 0)]
                assert _sample(r, 0) == forced[bt]
                differing += 1
    assert differing == 3 + 2
    for folder in ("gemma-repeat", "gemma-repeat3"):  # the first runs flagged last session
        with lzma.open(REPORTS / "h200-repeat" / folder / "samples.jsonl.xz", "rt", encoding="utf-8") as f:
            first = [json.loads(line) for line in f if '"index": 0,' in line]
        for r in first:
            if r["index"] == 0 and r["mode"] != "off" and r["token_ids"][:1] != forced[256][:1]:
                assert r["token_ids"] == forced[r["max_bt"]]


def _logged_patches(path) -> dict[str, dict[str, tuple]]:
    """A stream log's per-run patch records (printed by h200-session.sh's `patched` from each first run's, re-run's
    and twin's meta.json): scenario -> run key -> (cell id, role, patch)."""
    line = re.compile(r"^\s+(\S+)\s+(run|re-run|twin)\s+([0-9a-f]{12})(?: mismatches=\S+)? patch=(\{.*\})$")
    seen = defaultdict(dict)
    scenario = None
    for row in path.read_text().splitlines():
        if m := re.match(r"== \S+ (\S+): evalharness", row):
            scenario = m.group(1)
        elif m := line.match(row):
            seen[scenario][m.group(3)] = (m.group(1), m.group(2), ast.literal_eval(m.group(4)))
    return seen


def test_the_patches_fired_in_every_run_they_were_given_to():
    """The stream log's per-run counters (meta.json "patch", printed by h200-session.sh's `patched`): `reset-late`
    replayed the reset in every forced run and re-run (and zeroed the KV cache once), never in a twin; `sync-reset`
    synchronised in every graph run and twin (the async IOs' build and reset), never in `off` (async off there)."""
    seen = _logged_patches(RACE / "logs" / "stream-b.log")
    for name in ("smol-race-force", "gemma-race-force"):
        summary = load(name)[0]
        cells = {c["id"]: c for c in summary["cells"]}
        assert {cid for cid, _, _ in seen[name].values()} == set(cells)
        for key, (cid, role, patch) in seen[name].items():
            if role == "twin" or cells[cid]["mode"] == "off":
                assert patch == {}
            else:
                assert patch["fired"] >= 1 and patch["kv_zeroed"] == 1 and cells[cid]["inject"] == "reset-late"
    fix = {c["id"]: c for c in load("smol-race-fix")[0]["cells"]}
    assert {cid for cid, _, _ in seen["smol-race-fix"].values()} == set(fix)
    for cid, role, patch in seen["smol-race-fix"].values():
        assert patch == {"synced": 0 if fix[cid]["mode"] == "off" else 2}


SECOND = RACE / "logs" / "2026-11-30-0223"  # the second device session's logs (gemma-race-fix, smol-race-probe)


def _patches(scenario: str) -> dict[str, dict]:
    """A second-session scenario's patches.json (every run's meta.json "patch", --repeat runs included), checked to
    hold exactly the summary's runs and to agree with what the stream log printed for the first runs and twins."""
    patches = json.loads((RACE / scenario / "patches.json").read_text())
    assert set(patches) == set(load(scenario)[0]["runs"])
    logged = _logged_patches(SECOND / "stream-b.log")[scenario]
    assert logged
    for key, (_, _, patch) in logged.items():
        assert {k: v for k, v in patches[key].items() if k not in ("patch", "targets")} == patch
    return patches


def test_sync_reset_leaves_every_gemma_varlen_run_equal_to_its_twin():
    """gemma-race-fix (`sync-reset` in every run and twin, --repeat 5, the 8-worker layout of gemma-async): all 10 varlen
    runs equal their twin on all 128 samples, so both cells PASS with 5 of 5 repeats matching, where gemma-async's
    unpatched async-on runs differed in 5 of 8 (sample 0, token 0). Sample 0 starts as the twin's ` She` in every
    fixed run, never as the forced race's ` In`. The patch changes no token by itself: the twins equal
    gemma-race-force's and gemma-async's (async on) unpatched twins, and the `off` references gemma-race-force's, on all
    128 samples. It synchronised twice in every varlen run (repeats included) and twin, never in `off` (async off)."""
    patches = _patches("gemma-race-fix")
    force, unpatched = load("gemma-race-force")[1], load("gemma-async")[1]
    fixed = 0
    for (axes, bt, mode), cell in _cells("gemma-race-fix").items():
        d = derive("gemma-race-fix", cell)
        assert d.outcome.verdict == "PASS" and cell["inject"] == "sync-reset"
        if mode == "off":
            assert compare_twin(d.run, force[("default", axes, bt, "off", False)]).count == 0
            assert patches[cell["run"]]["synced"] == 0
            continue
        forced = _sample(force[("default", axes, bt, mode, False)], 0)
        assert compare_twin(d.twin, force[("default", axes, bt, mode, True)]).count == 0
        assert compare_twin(d.twin, unpatched[("default", f"{axes} async=on", bt, mode, True)]).count == 0
        assert d.repeats == {"runs": 5, "matched": 5} and len(d.mp.graph_runs) == 5
        for r in _graph_runs(d):
            assert compare_twin(r, d.twin).count == 0
            assert _sample(r, 0)[0] == _sample(d.twin, 0)[0] != forced[0]
        assert {patches[k]["synced"] for k in [*d.mp.graph_runs, cell["twin"]]} == {2}
        fixed += len(d.mp.graph_runs)
    assert fixed == 10
    hit = 0  # the same cells unpatched (gemma-async, async on): runs that differ from their twin
    for (axes, bt, mode), cell in _cells("gemma-async").items():
        if mode != "off" and axes.endswith("async=on") and bt in BUDGETS["gemma-race-fix"]:
            d = derive("gemma-async", cell)
            hit += sum(compare_twin(r, d.twin).count > 0 for r in _graph_runs(d))
    assert hit == 5


def test_the_probe_at_640_saw_no_natural_hit_and_times_the_reset_against_the_copy():
    """smol-race-probe (`reset-probe` in every run and twin, --repeat 3, SmolLM2 at 640, where the forced race did not
    give SAMPLE66.md's predicted tokens): the 3 decode runs equal their twin on all 128 samples and sample 66 starts as
    the twin's, not as the forced race's 33 32 30: the race did not fire naturally. The probe changes no token: twin
    and `off` equal smol-race-force's unpatched ones at 640. Its timings (patches.json): measured in every async run
    (the 3 decode runs and the twin), not in `off` (async off); in each the reset's writes ended before step 0's H2D
    copy ended, in 2 of the 4 after the copy began (an overlap with no token changed)."""
    patches = _patches("smol-race-probe")
    force = load("smol-race-force")[1]
    cells = _cells("smol-race-probe")
    off = derive("smol-race-probe", cells[("attn=torch-flash", 640, "off")])
    d = derive("smol-race-probe", cells[("attn=torch-flash", 640, "decode")])
    assert off.outcome.verdict == d.outcome.verdict == "PASS" and d.repeats == {"runs": 3, "matched": 3}
    key = ("default", "attn=torch-flash", 640)
    assert compare_twin(d.twin, force[(*key, "decode", True)]).count == 0
    assert compare_twin(off.run, force[(*key, "off", False)]).count == 0
    forced = _sample(force[(*key, "decode", False)], SMOL_FIRST)
    assert len(d.mp.graph_runs) == 3
    for r in _graph_runs(d):
        assert compare_twin(r, d.twin).count == 0
        assert _sample(r, SMOL_FIRST)[0] == _sample(d.twin, SMOL_FIRST)[0] != forced[0]
    measured = {k: p for k, p in patches.items() if p["measured"]}
    assert set(measured) == {*d.mp.graph_runs, d.mp.twin} and off.run.key not in measured
    for p in measured.values():
        assert p["reset_end_after_h2d_start_ms"] > p["reset_end_after_h2d_end_ms"]  # the copy took time
        assert p["reset_end_after_h2d_end_ms"] < 0
    overlap = [k for k, p in measured.items() if p["reset_end_after_h2d_start_ms"] > 0]
    assert len(overlap) == 2 and d.mp.twin in overlap
