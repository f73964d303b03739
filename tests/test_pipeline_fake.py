"""The pipeline's logic through the engine seam with the fake engine (evalharness.fake_engine): planning, the job
cache, scoring, verdicts, the summary, the report files and the history, in seconds. The real CB engine's
end-to-end tests (test_e2e_cpu.py, test_sweep.py) check that the real engine plugs into the same seam."""

from __future__ import annotations

import json

import pytest

from evalharness.fake_engine import FakeEngine
from evalharness.pipeline import evaluate
from evalharness.plan import prepare
from evalharness.settings import Settings, make

MODEL = {"path": "fake-model", "gguf_file": None, "dtype": "fp32", "trust_remote_code": False, "label": "fake"}
PROBES = {"default": {"transformers": "fake", "tuple_graphs": True}}


def settings(tmp_path, **kw) -> Settings:
    base = dict(data=None, limit=12, fewshot=0, max_new_tokens=64, out=tmp_path / "report", progress=False)
    return make(**{**base, **kw})


def run(s: Settings, engine: FakeEngine, cuda: bool = False):
    return evaluate(s, engine=engine, cuda=cuda, model=MODEL, probes=PROBES)


@pytest.fixture(scope="module")
def right(tmp_path_factory):
    """The correct answer of each prompt of `settings(...)`, so that the fake engine answers like a perfect model."""
    s = settings(tmp_path_factory.mktemp("task"))
    task = prepare(s, MODEL)[2]
    return {prompt: target.split("####")[-1].strip() for prompt, target in zip(task.prompts, task.targets())}


def cells(ev) -> dict:
    return {c["mode"]: c for c in ev.summary.to_json()["cells"]}


def sweep_cells(ev) -> dict:
    return {f"{c['max_bt']}/{c['mode']}": c for c in ev.summary.to_json()["cells"]}


def test_stale_graphs_on_a_gpu_plan(tmp_path, right):
    ev = run(settings(tmp_path), FakeEngine(right, stale_every=5), cuda=True)
    c = cells(ev)
    assert c["off"]["verdict"] == "PASS" and c["off"]["accuracy"] == 1.0
    for mode in ("on", "varlen"):  # graph runs differ from their padded-eager twins on every sample
        assert c[mode]["verdict"] == "STALE_GRAPH" and c[mode]["twin_mismatches"] == c[mode]["n"] == 12
        assert c[mode]["first_mismatches"][0]["token"] == 4
    assert c["decode"]["verdict"] == "SKIPPED"  # sdpa has no decode fast path: decode is its own twin
    assert ev.exit_code == 1 and ev.summary.header.exit_code == 1
    out = tmp_path / "report"
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(ev.summary.to_json(), default=str))
    assert ev.summary.cells_by_id["384/attn=sdpa/on"].verdict == "STALE_GRAPH"
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == len(ev.summary.samples) == sum(1 + (c["mode"] != "off") for c in c.values()) * 12
    assert "STALE_GRAPH" in (out / "report.md").read_text() and "STALE_GRAPH" in (out / "report.html").read_text()


def test_cpu_plan_perturb_abort_hang_and_the_cache(tmp_path, right):
    engine = FakeEngine(right)
    s = settings(tmp_path, inject=["on=perturb", "varlen=abort", "decode=hang"])
    ev = run(s, engine)
    c = cells(ev)
    assert c["off"]["verdict"] == "PASS"
    assert c["on"]["verdict"] == "STALE_GRAPH"  # the fault differs from the (unpatched) twin even without graphs
    assert (c["varlen"]["verdict"], c["varlen"]["error_class"]) == ("FAIL", "sigabrt")
    assert (c["decode"]["verdict"], c["decode"]["error_class"]) == ("FAIL", "hang")
    assert ev.exit_code == 1
    ran = len(engine.calls)
    assert engine.calls.count(c["varlen"]["run"]) == 2  # a crash is retried once in a fresh worker
    # the same folder again: finished jobs come from the cache, crashes and timeouts run again
    again = FakeEngine(right)
    ev2 = run(s, again)
    assert sorted(set(again.calls)) == sorted({c["varlen"]["run"], c["decode"]["run"]}) and len(again.calls) < ran
    assert [(o.mode, o.verdict) for o in ev2.outcomes] == [(o.mode, o.verdict) for o in ev.outcomes]


def test_history_drift_is_in_the_reports_written_once(tmp_path, right):
    history = tmp_path / "history.jsonl"
    first = run(settings(tmp_path / "a", modes=["off"], history=history), FakeEngine(right))
    assert first.exit_code == 0 and first.summary.history.baseline is None
    assert "No earlier passing run" in (tmp_path / "a" / "report" / "report.md").read_text()
    wrong = {prompt: str(int(answer.replace(",", "")) + 1) for prompt, answer in right.items()}
    second = run(settings(tmp_path / "b", modes=["off"], history=history), FakeEngine(wrong))
    check = second.summary.history
    assert check.significant and check.drifts[0].lost == 12 and check.drifts[0].test == "mcnemar"
    assert second.exit_code == 1 and second.summary.header.exit_code == 0  # PASS cells, drift exits 1
    out = tmp_path / "b" / "report"
    md = (out / "report.md").read_text()
    assert md.count("## Drift vs the last passing run") == 1 and "**DRIFT**" in md
    assert 'id="drift"' in (out / "report.html").read_text()
    assert json.loads((out / "drift.json").read_text())["drifts"][0]["significant"] is True
    assert len(history.read_text().splitlines()) == 2


def test_crashed_sweep_cells_fail_others_come_from_the_cache(tmp_path, right):
    """Crash isolation per cell in a max_bt sweep sharing one job cache (the real-engine hang: test_sweep.py)."""
    cache = tmp_path / "cache"
    sweep = dict(modes=["off", "on"], max_bts=[32, 64], cache=cache)
    base = run(settings(tmp_path / "base", **sweep), FakeEngine(right))
    assert [o.verdict for o in base.outcomes] == ["PASS", "SKIPPED", "PASS", "SKIPPED"]
    cached = {d.name: (d / "result.json").stat().st_mtime_ns for d in cache.iterdir()}
    engine = FakeEngine(right)
    ev = run(settings(tmp_path / "abort", inject=["on=abort"], **sweep), engine)
    assert ev.exit_code == 1 and ev.summary.header.exit_code == 1
    got, before = sweep_cells(ev), sweep_cells(base)
    for cell in ("32/on", "64/on"):
        assert (got[cell]["verdict"], got[cell]["error_class"], got[cell]["inject"]) == ("FAIL", "sigabrt", "abort")
        assert ev.summary.header.runs[got[cell]["run"]].status == "crash"
        assert got[cell]["twin"] == before[cell]["twin"] and got[cell]["twin_failed_requests"] == 0
    for cell in ("32/off", "64/off"):
        assert {k: v for k, v in got[cell].items() if k not in ("wall_s", "tokens_per_s", "samples_per_s")} == \
            {k: v for k, v in before[cell].items() if k not in ("wall_s", "tokens_per_s", "samples_per_s")}
    assert set(engine.calls) == {got["32/on"]["run"], got["64/on"]["run"]}  # the rest came from the cache
    for name, mtime in cached.items():
        assert (cache / name / "result.json").stat().st_mtime_ns == mtime
    failed = [d for d in cache.iterdir() if (d / "failed.json").exists() and not (d / "result.json").exists()]
    assert len(failed) == 2
    md = (tmp_path / "abort" / "report" / "report.md").read_text()
    assert "| 32 | on [abort] | **FAIL** |" in md and "## FAIL details" in md and "sigabrt" in md
