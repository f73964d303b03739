"""End to end on CPU through transformers' real continuous-batching engine, with the tiny seeded Llama.

Each CLI call runs its engine runs in worker processes, as a user's would. Without CUDA no graph is captured, so the
graph modes must come back SKIPPED with the reason, after their padded-eager twins ran and agreed; injected faults
must turn into STALE_GRAPH or FAIL verdicts, which proves the oracle can fail on this machine too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

LIMIT = 4
NEW_TOKENS = 12
# The fault tests' runs: the faulted run and the clean one beside it (its twin, or the other mode's), and in the
# confirmation round the re-run and its twin's, each pair in two workers of one thread at once (the 2 cores of CI)
# rather than one after the other; every comparison a verdict makes is between runs of the same invocation.
SIDE_BY_SIDE = ("--jobs", "2")
SUMMARY_FIELDS = {"verdict": str, "accuracy": float, "n": int, "failed_requests": int, "tokens_per_s": float,
                  "wall_s": float}


def evalharness(model: Path, data: Path, out: Path, *extra: str, limit: int = LIMIT, timeout: float = 600):
    cmd = [sys.executable, "-m", "evalharness", "gsm8k", "--model", str(model), "--data", str(data),
           "--limit", str(limit), "--fewshot", "0", "--max-new-tokens", str(NEW_TOKENS), "--max-bt", "128",
           "--dtype", "fp32", "--out", str(out), "--no-progress", *extra]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    proc.wall = time.monotonic() - t0
    return proc


def load(out: Path):
    summary = json.loads((out / "summary.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return summary, samples


def rows(samples, mode, twin):
    return sorted((s for s in samples if s["mode"] == mode and s["twin"] is twin), key=lambda s: s["index"])


@pytest.fixture(scope="module")
def all_modes(tiny_llama, gsm8k_test, tmp_path_factory):
    out = tmp_path_factory.mktemp("all-modes") / "report"
    proc = evalharness(tiny_llama, gsm8k_test, out, "--graphs", "off,on,varlen,decode")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, out, *load(out)


def test_all_modes_exit_0_and_graph_modes_skipped_with_reason(all_modes):
    proc, out, summary, _ = all_modes
    modes = summary["modes"]
    assert set(modes) == {"off", "on", "varlen", "decode"}
    assert modes["off"]["verdict"] == "PASS" and modes["off"]["reason"] == "reference run"
    for mode in ("on", "varlen", "decode"):
        assert modes[mode]["verdict"] == "SKIPPED"
        assert "CUDA is not available" in modes[mode]["reason"]
        assert f"{mode:<7} SKIPPED" in proc.stdout
    assert summary["exit_code"] == 0
    assert proc.stdout.strip().splitlines()[-2:] == [f"report: {out / 'report.md'}", f"report: {out / 'report.html'}"]


def test_twins_ran_and_agree(all_modes):
    _, _, summary, samples = all_modes
    for mode in ("on", "varlen", "decode"):
        cell = summary["modes"][mode]
        assert cell["twin_mismatches"] == 0 and cell["twin_compared"] == LIMIT
        assert cell["twin_failed_requests"] == 0
        run, twin = rows(samples, mode, False), rows(samples, mode, True)
        assert [r["token_ids"] for r in run] == [t["token_ids"] for t in twin]
    # on and varlen share one padded-eager run on CPU; decode's twin leaves max_seqlen_k unpadded: its own run
    m = summary["modes"]
    assert m["on"]["run"] == m["on"]["twin"] == m["varlen"]["run"] == m["varlen"]["twin"]
    assert m["decode"]["run"] == m["decode"]["twin"] != m["on"]["run"]
    assert m["off"]["run"] not in (m["on"]["run"], m["decode"]["run"])
    assert len(summary["runs"]) == 3  # clean: nothing to confirm, no re-run
    assert all(c["confirmation"] is None and c["repeats"] is None for c in summary["cells"])
    shared = summary["runs"][m["on"]["run"]]
    assert shared["engine"]["force_padding"] and shared["engine"]["pad_seqlen_k"]
    assert sorted(shared["served"]) == ["on", "on twin", "varlen", "varlen twin"]
    assert "shared with" in m["on"]["served_by"]
    for r in summary["runs"].values():
        assert r["status"] == "ok" and r["resolved"]["use_cuda_graph"] == [False, False]


def test_summary_schema(all_modes, tiny_llama):
    _, _, summary, _ = all_modes
    for mode, cell in summary["modes"].items():
        for name, kind in SUMMARY_FIELDS.items():
            assert isinstance(cell[name], kind), (mode, name, cell[name])
        assert cell["n"] == LIMIT and cell["failed_requests"] == 0
        assert 0.0 <= cell["accuracy"] <= 1.0
        assert cell["tokens_per_s"] > 0 and cell["wall_s"] > 0
        assert cell["peak_mem_gb"] is None  # CPU: no CUDA memory statistics
        if mode == "off":
            assert cell["twin_mismatches"] is None and cell["p_value"] is None
        else:
            assert isinstance(cell["twin_mismatches"], int) and isinstance(cell["p_value"], float)
            assert 0.0 <= cell["p_value"] <= 1.0
    assert summary["max_bt"] == 128 and summary["max_bts"] == [128]
    assert summary["model"] == str(tiny_llama)
    versions = summary["versions"]
    assert versions["device"] == "cpu"
    import torch
    import transformers

    assert versions["torch"] == torch.__version__ and versions["transformers"] == transformers.__version__
    assert summary["n"] == LIMIT and summary["dtype"] == "fp32" and summary["max_new_tokens"] == NEW_TOKENS


def test_samples_jsonl_one_line_per_mode_twin_sample(all_modes, gsm8k_test):
    _, _, summary, samples = all_modes
    keys = [(s["mode"], s["twin"], s["index"]) for s in samples]
    expected = {("off", False, i) for i in range(LIMIT)} | {
        (m, t, i) for m in ("on", "varlen", "decode") for t in (False, True) for i in range(LIMIT)}
    assert len(keys) == len(set(keys)) == len(expected) and set(keys) == expected
    targets = [json.loads(line)["answer"] for line in gsm8k_test.read_text().splitlines()[:LIMIT]]
    for s in samples:
        assert s["status"] == "ok" and s["error"] is None
        assert 0 < len(s["token_ids"]) <= NEW_TOKENS
        assert isinstance(s["text"], str) and isinstance(s["correct"], bool)
        assert s["target"] == targets[s["index"]]
        assert set(s["answers"]) == {"strict-match", "flexible-extract"} and s["answer"] == s["answers"]["strict-match"]
    # the summary's accuracy is the mean of the samples' `correct`
    for mode, cell in summary["modes"].items():
        mine = rows(samples, mode, False)
        assert cell["correct"] == sum(s["correct"] for s in mine)
        assert cell["accuracy"] == pytest.approx(cell["correct"] / LIMIT)


def test_off_run_matches_plain_greedy_generate(all_modes, tiny_llama):
    """The CB engine's unpadded output is the model's own greedy continuation: the harness measures the real thing."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out, summary, samples = all_modes
    job_dir = next(d for d in (out / "runs").iterdir()
                   if json.loads((d / "job.json").read_text())["engine"]["force_padding"] is False)
    prompts = json.loads((job_dir / "job.json").read_text())["prompts"]
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    off = rows(samples, "off", False)
    for i in range(LIMIT):
        ids = tok(prompts[i], return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.eos_token_id)
        expected = gen[0, ids["input_ids"].shape[1]:].tolist()
        assert strip_eos(off[i]["token_ids"], tok.eos_token_id) == strip_eos(expected, tok.eos_token_id)


def strip_eos(tokens, eos):
    return tokens[:-1] if tokens and tokens[-1] == eos else tokens


def test_report_md(all_modes):
    _, out, _, _ = all_modes
    md = (out / "report.md").read_text()
    assert "| max_bt | mode | verdict | accuracy % (95% CI) | delta vs off (p) | twin mismatches |" in md
    assert "| 128 | off | **PASS** |" in md
    for mode in ("on", "varlen", "decode"):
        assert f"| 128 | {mode} | **SKIPPED** |" in md
        assert f"| 0/{LIMIT} |" in md
    assert "CUDA is not available" in md


def test_rerun_with_same_folder_reuses_runs(all_modes, tiny_llama, gsm8k_test):
    proc, out, summary, _ = all_modes
    again = evalharness(tiny_llama, gsm8k_test, out, "--graphs", "off,on,varlen,decode")
    assert again.returncode == 0, again.stderr
    assert again.wall < 60
    summary2, _ = load(out)
    for mode in summary["modes"]:
        a, b = summary["modes"][mode], summary2["modes"][mode]
        assert (a["verdict"], a["accuracy"], a["run"], a["wall_s"]) == (b["verdict"], b["accuracy"], b["run"],
                                                                        b["wall_s"])


def test_perturbed_engine_is_flagged_stale_graph(tiny_llama, gsm8k_test, tmp_path):
    out = tmp_path / "report"
    proc = evalharness(tiny_llama, gsm8k_test, out, "--graphs", "on", "--inject", "on=perturb", *SIDE_BY_SIDE)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary, samples = load(out)
    on = summary["modes"]["on"]
    # without CUDA `on` captures no graph, but its run (perturbed) differs from its twin (clean): flagged, not SKIPPED
    assert on["verdict"] == "STALE_GRAPH" and on["inject"] == "perturb"
    assert on["twin_mismatches"] > 0 and on["twin_compared"] == LIMIT
    assert on["run"] != on["twin"]
    assert summary["runs"][on["run"]]["engine"]["fault"] == "perturb"
    assert summary["runs"][on["twin"]]["engine"]["fault"] is None
    assert summary["exit_code"] == 1
    assert "STALE_GRAPH" in proc.stdout
    run, twin = rows(samples, "on", False), rows(samples, "on", True)
    differing = [r["index"] for r, t in zip(run, twin) if r["token_ids"] != t["token_ids"]]
    assert len(differing) == on["twin_mismatches"]
    first = on["first_mismatches"][0]
    r, t = run[first["index"]], twin[first["index"]]
    assert r["token_ids"][:first["token"]] == t["token_ids"][:first["token"]]
    assert r["token_ids"][first["token"]] != t["token_ids"][first["token"]]
    # confirmed: a fresh re-run of the same configuration (attempt 1, its own job) reproduces the same mismatches
    conf = on["confirmation"]
    assert conf["status"] == "confirmed" and conf["runs_compared"] == 2 and conf["runs_matching_twin"] == 0
    rerun = conf["runs"][1]["run"]
    assert summary["runs"][rerun]["engine"]["attempt"] == 1 and rerun != on["run"]
    assert conf["runs"][0]["first_mismatches"] == conf["runs"][1]["first_mismatches"]
    # and the twin, re-run beside it (attempt 1, its own job), reproduces itself: the oracle held
    (twin_rerun,) = conf["twin_reruns"]
    assert twin_rerun["mismatches"] == 0 and summary["runs"][twin_rerun["run"]]["engine"]["attempt"] == 1
    md = (out / "report.md").read_text()
    assert "confirmation: confirmed: every run reproduces the same mismatches and the twin reproduces itself" in md
    assert "| 128 | on [perturb] | **STALE_GRAPH** |" in md
    assert "## on at max_bt 128: first mismatching samples" in md and "<pre>" in md


@pytest.mark.parametrize("repeat", [1, 3])
def test_flaky_engine_is_nondeterministic_not_stale(tiny_llama, gsm8k_test, tmp_path, repeat):
    """`flaky` perturbs the first run of a mode only: its re-run (or repeats) equal the twin."""
    out = tmp_path / "report"
    proc = evalharness(tiny_llama, gsm8k_test, out, "--graphs", "on", "--inject", "on=flaky", "--repeat",
                       str(repeat), *SIDE_BY_SIDE)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary, _ = load(out)
    on = summary["modes"]["on"]
    assert on["verdict"] == "NONDETERMINISTIC" and on["twin_mismatches"] > 0
    conf = on["confirmation"]
    assert conf["status"] == "not_reproduced" and conf["runs_compared"] == max(2, repeat)
    assert [r["mismatches"] > 0 for r in conf["runs"]] == [True] + [False] * (max(2, repeat) - 1)
    assert [summary["runs"][r["run"]]["engine"]["attempt"] for r in conf["runs"]] == list(range(max(2, repeat)))
    assert f"1 of {max(2, repeat)} runs" in on["reason"] and "first differs at sample" in on["reason"]
    if repeat > 1:  # the repeats settle it: no re-run
        assert on["repeats"] == {"runs": 3, "matched": 2} and {r["role"] for r in conf["runs"]} == {"run", "repeat"}
        assert len(summary["runs"]) == 4  # 3 attempts and the twin
    assert "NONDETERMINISTIC" in (out / "report.html").read_text()


def test_aborted_worker_fails_its_mode_only(tiny_llama, gsm8k_test, tmp_path):
    out = tmp_path / "report"
    proc = evalharness(tiny_llama, gsm8k_test, out, "--graphs", "off,varlen", "--inject", "off=abort",
                       *SIDE_BY_SIDE)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    summary, samples = load(out)
    off, varlen = summary["modes"]["off"], summary["modes"]["varlen"]
    assert off["verdict"] == "FAIL" and off["error_class"] == "sigabrt"
    assert "worker killed by SIGABRT" in off["reason"]
    assert 1 <= off["failed_requests"] < LIMIT  # the abort fires after the first finished request
    statuses = [s["status"] for s in rows(samples, "off", False)]
    assert statuses.count("ok") == LIMIT - off["failed_requests"] and "missing" in statuses
    # the other mode's runs are untouched
    assert varlen["verdict"] == "SKIPPED" and varlen["failed_requests"] == 0
    assert varlen["twin_compared"] == LIMIT and varlen["twin_mismatches"] == 0
    assert all(s["status"] == "ok" for s in rows(samples, "varlen", True))
    assert "## FAIL details" in (out / "report.md").read_text()


def test_hung_worker_times_out_as_fail_hang(tiny_llama, gsm8k_test, tmp_path):
    out = tmp_path / "report"
    timeout = 10
    proc = evalharness(tiny_llama, gsm8k_test, out, "--graphs", "off", "--inject", "off=hang", "--timeout-s",
                       str(timeout), limit=2)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert timeout <= proc.wall < timeout + 90  # killed at the timeout, not after the fault's hour-long sleep
    summary, samples = load(out)
    off = summary["modes"]["off"]
    assert off["verdict"] == "FAIL" and off["error_class"] == "hang"
    assert f"after the {timeout} s timeout" in off["reason"]
    assert off["failed_requests"] >= 1
    run = summary["runs"][off["run"]]
    assert run["status"] == "timeout"
