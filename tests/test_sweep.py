"""Sweeps over max_batch_tokens: crash isolation per cell, --resume after a SIGKILL of the parent, and the
plan / run-job / merge split, end to end on CPU through the real engine (tiny seeded Llama); plus fast unit tests of
settings.json, the job hash and the usage errors.

The slow tests share one engine-run cache (--cache): the faulted sweeps recompute only their faulted cells.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalharness import store
from evalharness.cli import main
from evalharness.settings import make

LIMIT = 3
NEW_TOKENS = 8
SWEEP = ("--max-bt", "32,64", "--graphs", "off,on")
TIMINGS = {"wall_s", "tokens_per_s", "samples_per_s", "peak_mem_gb"}
CELLS = ["32/off", "32/on", "64/off", "64/on"]


def common(model: Path, data: Path) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--limit", str(LIMIT), "--fewshot", "0", "--max-new-tokens",
            str(NEW_TOKENS), "--dtype", "fp32", "--no-progress"]


def cli(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evalharness", *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def cells(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    return {f"{c['max_bt']}/{c['mode']}": {k: v for k, v in c.items() if k not in TIMINGS} for c in summary["cells"]}


# --- fast ------------------------------------------------------------------------------------------------------

def test_settings_round_trip(tmp_path, gsm8k_test):
    # local paths are saved resolved (a resume may start elsewhere): give one already resolved, links followed
    s = make(model="org/name", data=str(gsm8k_test.resolve()), limit=3, modes=["off", "on"], max_bts=[32, 64],
             inject=["on=abort"], out=tmp_path / "out", cache=tmp_path / "cache", asyncs=[None, True],
             engines={"default": None, "b": "/x"}, devices=["0", "1"])
    back = store.settings_from_json(json.loads(json.dumps(store.settings_json(s))))
    assert back == s


def test_job_hash_covers_every_ingredient(tmp_path, monkeypatch):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"x")
    model = {"path": str(model_dir)}
    base = dict(fingerprint="f", python="/py", pythonpath=None, run_key="k", probe={"transformers": "5.24"},
                model=model)
    h = store.job_hash(**base)
    assert h == store.job_hash(**base)
    for name, value in [("fingerprint", "g"), ("python", "/other/py"), ("pythonpath", "/tf"), ("run_key", "k2"),
                        ("probe", {"transformers": "5.5.4"})]:
        assert store.job_hash(**{**base, name: value}) != h, name
    (model_dir / "model.safetensors").write_bytes(b"xy")  # other weights
    assert store.job_hash(**base) != h
    h = store.job_hash(**base)
    monkeypatch.setattr(store, "__version__", "9.9.9")
    assert store.job_hash(**base) != h


def test_resume_takes_no_other_options(tmp_path, capsys):
    assert main(["gsm8k", "--resume", str(tmp_path), "--limit", "3", "--graphs", "off"]) == 2
    err = capsys.readouterr().err
    assert "drop --graphs, --limit" in err and "settings.json" in err
    assert main(["gsm8k", "--resume", str(tmp_path), "--jobs", "2"]) == 2
    assert "no settings.json" in capsys.readouterr().err


def test_plan_needs_out_and_merge_needs_a_plan(tmp_path, capsys):
    assert main(["plan", "--graphs", "off"]) == 2
    assert "--out DIR is required" in capsys.readouterr().err
    assert main(["merge", str(tmp_path)]) == 2
    assert "no jobs.json" in capsys.readouterr().err
    assert main(["run-job", str(tmp_path), "0"]) == 2


# --- slow: through the real engine -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sweep-cache")


@pytest.fixture(scope="module")
def baseline(tiny_llama, gsm8k_test, tmp_path_factory, cache):
    """An uninterrupted single-process sweep: what resume and merge must reproduce."""
    out = tmp_path_factory.mktemp("baseline") / "report"
    proc = cli("gsm8k", *common(tiny_llama, gsm8k_test), *SWEEP, "--cache", str(cache), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = cells(out)
    assert list(got) == CELLS
    assert [got[c]["verdict"] for c in CELLS] == ["PASS", "SKIPPED", "PASS", "SKIPPED"]
    return out, got


@pytest.mark.slow
@pytest.mark.parametrize("fault,error_class,extra", [("hang", "hang", ("--timeout-s", "8", "--jobs", "2"))])
def test_faulted_cells_fail_others_complete(baseline, tiny_llama, gsm8k_test, cache, tmp_path, fault, error_class,
                                            extra):
    """A real worker killed at its timeout (two at once). The same with a crash: test_pipeline_fake.py."""
    out = tmp_path / "report"
    cached = {d.name: (d / "result.json").stat().st_mtime_ns for d in cache.iterdir() if (d / "result.json").exists()}
    t0 = time.monotonic()
    proc = cli("gsm8k", *common(tiny_llama, gsm8k_test), *SWEEP, "--inject", f"on={fault}", *extra, "--cache",
               str(cache), "--out", str(out))
    wall = time.monotonic() - t0
    assert proc.returncode == 1, proc.stdout + proc.stderr
    got = cells(out)
    for c in CELLS:
        if c.endswith("/on"):
            assert got[c]["verdict"] == "FAIL" and got[c]["error_class"] == error_class, got[c]
            assert got[c]["inject"] == fault
        else:
            assert got[c] == baseline[1][c]  # PASS, read back from the shared cache
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exit_code"] == 1
    import transformers

    # a killed worker leaves no versions of its own: the cell names its engine's, read by the probe
    assert {c["transformers"] for c in summary["cells"]} == {transformers.__version__}
    for c in ("32/on", "64/on"):
        run = summary["runs"][got[c]["run"]]
        assert run["status"] == ("timeout" if fault == "hang" else "crash")
        # the twin ran clean and agrees with the baseline's
        assert got[c]["twin"] == baseline[1][c]["twin"] and got[c]["twin_failed_requests"] == 0
    md = (out / "report.md").read_text()
    assert f"| 32 | on [{fault}] | **FAIL** |" in md and f"| 64 | on [{fault}] | **FAIL** |" in md
    assert "## FAIL details" in md and error_class in md
    # the clean runs came from the cache untouched; the crashed ones left failed.json, no result.json
    for name, mtime in cached.items():
        assert (cache / name / "result.json").stat().st_mtime_ns == mtime
    failed = [d for d in cache.iterdir() if (d / "failed.json").exists() and not (d / "result.json").exists()
              and json.loads((d / "failed.json").read_text())["error_class"] == error_class]
    assert len(failed) == 2
    for d in failed:  # a crash or a timeout is retried once, in a fresh worker
        assert json.loads((d / "failed.json").read_text())["meta"]["attempts"] == 2
    if fault == "hang":
        assert wall < 2 * 8 + 90  # the two hung jobs ran side by side, each killed at the timeout, twice
        # (only they run: every other job of the sweep, twins included, comes from the shared cache)


@pytest.mark.slow
def test_sigkill_then_resume_recomputes_only_missing_jobs(baseline, tiny_llama, gsm8k_test, tmp_path, cache):
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "evalharness", "gsm8k", *common(tiny_llama, gsm8k_test), *SWEEP, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    try:
        while not list(out.glob("runs/*/result.json")):
            assert proc.poll() is None and time.monotonic() < deadline, "no job finished"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (out / "settings.json").exists() and not (out / "summary.json").exists()
    done = {p.parent.name: (p.stat().st_mtime_ns, p.read_text()) for p in out.glob("runs/*/result.json")}
    assert 1 <= len(done) < 4
    time.sleep(1)
    # the killed parent took its worker with it: nothing writes into the job folders any more
    snapshot = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*")}
    time.sleep(2)
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*")} == snapshot

    again = cli("gsm8k", "--resume", str(out), "--no-progress")
    assert again.returncode == 0, again.stdout + again.stderr
    for name, (mtime, text) in done.items():  # finished jobs were read back, not recomputed
        path = out / "runs" / name / "result.json"
        assert path.stat().st_mtime_ns == mtime and path.read_text() == text
    assert len(list(out.glob("runs/*/result.json"))) == 4
    assert cells(out) == baseline[1]
    # same settings, same job hashes: the baseline's cache holds every job of this run
    assert {p.name for p in (out / "runs").iterdir()} <= {p.name for p in cache.iterdir()}
    settings = json.loads((out / "settings.json").read_text())["settings"]
    assert json.loads((out / "summary.json").read_text())["command"] == settings["command"]


@pytest.mark.slow
def test_plan_run_job_merge_equals_single_process_sweep(baseline, tiny_llama, gsm8k_test, tmp_path, cache):
    plan_dir, other = tmp_path / "plan", tmp_path / "machine-b"
    proc = cli("plan", *common(tiny_llama, gsm8k_test), *SWEEP, "--out", str(plan_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((plan_dir / "jobs.json").read_text())
    assert len(doc["jobs"]) == 4 and doc["ids"] == [e["id"] for e in doc["jobs"]]
    assert not (plan_dir / "runs").exists() or not list((plan_dir / "runs").glob("*/result.json"))  # nothing ran
    for e in doc["jobs"]:
        assert e["job_dir"] == f"runs/{e['id']}" and e["engine"]["max_bt"] in (32, 64) and e["serves"]
    assert {e["id"] for e in doc["jobs"]} <= {p.name for p in cache.iterdir()}  # same hashes as gsm8k's

    # "machine B" gets a copy of the plan folder; each machine runs some jobs
    other.mkdir()
    shutil.copy(plan_dir / "jobs.json", other / "jobs.json")
    ids = doc["ids"]
    r = cli("run-job", str(plan_dir), "0", "--no-progress")
    assert r.returncode == 0 and f"job 0 {ids[0]}: ok" in r.stdout, r.stdout + r.stderr
    r = cli("run-job", str(other), ids[1], "--no-progress")
    assert r.returncode == 0 and f"job 1 {ids[1]}: ok" in r.stdout, r.stdout + r.stderr
    missing = cli("merge", str(plan_dir), str(other))
    assert missing.returncode == 2 and "2 of 4 jobs have no result" in missing.stderr
    for job_id in ids[2:]:  # the rest as artifacts from a third machine (the baseline's runs of the same hashes)
        shutil.copytree(cache / job_id, tmp_path / "machine-c" / "runs" / job_id)
    merged = tmp_path / "merged"
    m = cli("merge", str(plan_dir), str(other), str(tmp_path / "machine-c"), "--out", str(merged))
    assert m.returncode == 0, m.stdout + m.stderr
    assert cells(merged) == baseline[1]
    base_samples = [json.loads(x) for x in (baseline[0] / "samples.jsonl").read_text().splitlines()]
    merged_samples = [json.loads(x) for x in (merged / "samples.jsonl").read_text().splitlines()]
    assert merged_samples == base_samples
    assert "| 64 | on | **SKIPPED** |" in (merged / "report.md").read_text()


@pytest.mark.slow
def test_run_job_crash_is_merged_as_fail(tiny_llama, gsm8k_test, tmp_path, cache):
    """A crashed job (retried once) leaves failed.json, not result.json: merge shows it as a FAIL cell."""
    plan_dir = tmp_path / "plan"
    proc = cli("plan", *common(tiny_llama, gsm8k_test), "--max-bt", "32", "--graphs", "off,on", "--inject",
               "on=abort", "--cache", str(tmp_path / "runs"), "--out", str(plan_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((plan_dir / "jobs.json").read_text())
    crash = next(e for e in doc["jobs"] if e["engine"]["fault"] == "abort")
    assert Path(crash["job_dir"]).is_absolute()  # --cache outside the plan folder
    r = cli("run-job", str(plan_dir), crash["id"], "--no-progress")
    assert r.returncode == 0 and "crash [sigabrt]" in r.stdout, r.stdout + r.stderr
    job_dir = Path(crash["job_dir"])
    assert (job_dir / "failed.json").exists() and not (job_dir / "result.json").exists()
    assert json.loads((job_dir / "failed.json").read_text())["meta"]["attempts"] == 2
    for e in doc["jobs"]:  # the clean jobs: from the shared cache when the module's baseline ran, else here
        if e is not crash and (cache / e["id"] / "result.json").exists():
            shutil.copytree(cache / e["id"], e["job_dir"], dirs_exist_ok=True)
        elif e is not crash:
            assert cli("run-job", str(plan_dir), str(e["index"]), "--no-progress").returncode == 0
    m = cli("merge", str(plan_dir))
    assert m.returncode == 1, m.stdout + m.stderr
    got = cells(plan_dir)
    assert got["32/on"]["verdict"] == "FAIL" and got["32/on"]["error_class"] == "sigabrt"
    assert got["32/off"]["verdict"] == "PASS"
