"""History lines and drift vs the last passing run (evalharness.history), on constructed lines with known p-values."""

from __future__ import annotations

import json

import pytest

from evalharness import history
from evalharness.cli import main
from evalharness.summary_doc import Cell, Summary
from evalharness.summary_header import Header


def line(run_id, per_sample=None, *, correct=None, n=None, verdict="PASS", mode="off", samples_id="S", date=None,
         device="H200", model="m"):
    if per_sample is not None:
        n, correct = len(per_sample), per_sample.count("1")
    return {"run_id": run_id, "date": date or run_id, "model": model, "task": "gsm8k", "device": device,
            "transformers": "5.x", "engine": "default", "axes": "attn=sdpa", "max_bt": 128, "mode": mode,
            "cell": f"128/attn=sdpa/{mode}", "verdict": verdict, "accuracy": correct / n, "n": n, "correct": correct,
            "samples_id": samples_id, "per_sample": per_sample}


def test_paired_drift_uses_exact_mcnemar():
    # 10 samples lost, 0 gained: exact McNemar p = 2 * 0.5**10
    base = line("r1", "1" * 10 + "0" * 10)
    cur = line("r2", "0" * 20)
    _, drifts = history.compare([base], [cur])
    (d,) = drifts
    assert d.test == "mcnemar" and (d.lost, d.gained) == (10, 0)
    assert d.p_value == pytest.approx(2 * 0.5 ** 10) and d.significant
    assert d.delta == pytest.approx(-0.5) and d.baseline_run == "r1"
    assert "DRIFT" in d.describe()


def test_paired_swap_with_equal_accuracy_is_not_drift():
    base = line("r1", "1100" * 5)
    cur = line("r2", "0011" * 5)  # same accuracy, 10 lost, 10 gained: p = 1
    (d,) = history.compare([base], [cur])[1]
    assert d.test == "mcnemar" and d.p_value == pytest.approx(1.0) and not d.significant


def test_unpaired_uses_fisher_when_samples_differ():
    base = line("r1", correct=80, n=100, samples_id="A", per_sample=None)
    cur = line("r2", correct=50, n=100, samples_id="B", per_sample=None)
    (d,) = history.compare([base], [cur])[1]
    from scipy.stats import fisher_exact

    assert d.test == "fisher"
    assert d.p_value == pytest.approx(fisher_exact([[80, 20], [50, 50]]).pvalue)
    assert d.p_value < 1e-4 and d.significant and d.lost is None
    # different length vectors with the same samples_id are not paired either
    base2 = line("r1", "1" * 20, samples_id="A")
    cur2 = line("r2", "1" * 10, samples_id="A")
    assert history.compare([base2], [cur2])[1][0].test == "fisher"


def test_baseline_is_last_passing_run_on_same_model_task_device():
    old_pass = line("r1", "1" * 20)
    failing = line("r2", "0" * 20, verdict="STALE_GRAPH")
    other_device = line("r3", "0" * 20, device="cpu")
    cur = line("r4", "1" * 20)
    base, drifts = history.compare([old_pass, failing, other_device], [cur])
    assert base[0]["run_id"] == "r1" and drifts[0].p_value == 1.0 and not drifts[0].significant
    # first run on a new model: no baseline
    assert history.compare([old_pass], [line("r5", "1" * 20, model="other")]) == (None, [])


def test_skipped_cells_count_and_failing_cells_disqualify_a_whole_run():
    run2 = [line("r2", "1" * 20), line("r2", "0" * 20, mode="on", verdict="ACCURACY_DROP")]
    assert not history.passed(run2) and history.passed([line("r1", "1" * 20, verdict="SKIPPED")])


def test_lines_from_summary_append_load_and_history_cli(tmp_path, capsys):
    info = {"model": "m", "data": "d.jsonl", "prompt": "chat, 0-shot", "filter": "flexible-extract", "n": 4,
            "created": "2026-01-01T00:00:00Z", "versions": {"device": "cpu", "transformers": "5.24", "torch": "2"},
            "attn": "sdpa", "dtype": "fp32", "max_new_tokens": 8, "max_bt": 128, "max_bts": [128],
            "thresholds": {"alpha": 0.05, "min_drop": 0.02}, "runs": {}, "command": "evalharness gsm8k", "exit_code": 0}
    cells = (Cell(id="128/attn=sdpa/off", engine="default", axes="attn=sdpa", max_bt=128, mode="off", verdict="PASS",
                  accuracy=0.5, n=4, finished=4, correct=2, transformers="5.24"),)
    summary = Summary(Header.from_json(info), cells, [])
    lines = history.lines_from_summary(summary, {"128/attn=sdpa/off": [True, False, True, False]}, run_id="a")
    assert lines[0]["per_sample"] == "1010" and lines[0]["device"] == "cpu" and lines[0]["task"].startswith("d.jsonl")
    on = lambda created: Summary(Header.from_json({**info, "created": created}), cells, [])  # noqa: E731 - the run of another day
    path = tmp_path / "h"  # a folder: FOLDER/history.jsonl
    path.mkdir()
    history.append(path, lines)
    history.append(path, history.lines_from_summary(on("2026-01-02T00:00:00Z"), run_id="b"))
    with open(path / "history.jsonl", "a") as f:
        f.write('{"torn": ')  # a killed writer's partial line is ignored
    history.append(path, history.lines_from_summary(on("2026-01-03T00:00:00Z"), run_id="c"))
    loaded = history.load(path)
    assert [x["run_id"] for x in loaded] == ["a", "b", "c"]
    png = tmp_path / "trend.png"
    assert main(["history", str(path), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "off max_bt=128" in out and out.count("acc=0.500") == 3
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["history", str(tmp_path / "none.jsonl")]) == 2
    json.dumps(loaded)  # plain JSON all the way


def test_nightly_workflow_shape():
    yaml = pytest.importorskip("yaml")
    from pathlib import Path

    wf = yaml.safe_load((Path(__file__).resolve().parents[1] / ".github/workflows/nightly-accuracy.yml").read_text())
    job = wf["jobs"]["sweep"]
    assert "self-hosted" in job["runs-on"] and "schedule" in wf[True]  # YAML 1.1 reads `on` as True
    steps = {s.get("name"): s for s in job["steps"]}
    install = steps["Install (torch first, then the harness)"]["run"]
    assert install.index("torch==") < install.index("-e '.[test]'")
    sweep = steps["Sweep (all graph modes, max_bt range, history and drift)"]["run"]
    assert "evalharness gsm8k" in sweep and "--out" in sweep and "--history" in sweep
    assert "GITHUB_STEP_SUMMARY" in steps["Job summary"]["run"]
    assert steps["Upload report folder"]["uses"].startswith("actions/upload-artifact@")
    assert "exit 1" in steps["Fail on any finding"]["run"]
    # every action pinned to a commit; the checkout keeps no token
    import re

    for step in job["steps"]:
        if "uses" in step:
            assert re.fullmatch(r"[\w./-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
    checkout = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["persist-credentials"] is False
    # history restored before the sweep and saved after it, from a path every runner gets back
    order = [s.get("name") for s in job["steps"]]
    restore, save = steps["Restore history"], steps["Save history"]
    assert order.index("Restore history") < order.index("Sweep (all graph modes, max_bt range, history and drift)") \
        < order.index("Save history")
    assert restore["uses"].startswith("actions/cache/restore@") and save["uses"].startswith("actions/cache/save@")
    assert restore["with"]["path"] == save["with"]["path"] == job["env"]["HISTORY_DIR"]
    assert "always()" in save["if"] and restore["with"]["restore-keys"]
    # JUnit published as test results; a failure notifies
    publish = steps["Publish JUnit results"]
    assert "junit-accuracy.xml" in publish["with"]["report_paths"] and "always()" in publish["if"]
    assert "--junitxml=\"$OUT/junit-accuracy.xml\"" in steps["GPU accuracy suite (pytest -m \"accuracy and gpu\")"]["run"]
    notify = steps["Notify on failure (issue labelled nightly-accuracy)"]
    assert "failure()" in notify["if"] and "gh issue" in notify["run"]
    assert wf["permissions"]["issues"] == "write" and wf["permissions"]["checks"] == "write"
    # actionlint knows the self-hosted `gpu` label
    lint = yaml.safe_load((Path(__file__).resolve().parents[1] / ".github/actionlint.yaml").read_text())
    assert set(job["runs-on"]) - {"self-hosted", "linux"} <= set(lint["self-hosted-runner"]["labels"])
