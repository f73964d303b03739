"""Engine A/B and engine axes (issue 8), end to end on CPU with the tiny seeded Llama.

Two engines that resolve to this interpreter but differ by an injected fault must show up side by side with the
paired McNemar test computed from their own samples; an engine whose ContinuousBatchingConfig takes only a bool
use_cuda_graph (a transformers 5.5.x, simulated by patching the dataclass field in every process it starts) must
SKIP varlen and decode with that reason instead of crashing.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from evalharness.stats import mcnemar_exact, paired_counts

pytestmark = pytest.mark.slow
# Two 1-thread workers at once (the 2 cores of CI) for the runs that need several workers (two engines, two attention
# implementations), rather than one after the other; all the runs compared are of the same invocation.
SIDE_BY_SIDE = ("--jobs", "2")


def run(model: Path, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "evalharness", "gsm8k", "--model", str(model), "--data", str(data), "--limit", "4",
           "--fewshot", "0", "--max-new-tokens", "12", "--max-bt", "128", "--dtype", "fp32", "--out", str(out),
           "--no-progress", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def test_two_engines_side_by_side_with_paired_test_from_the_same_samples(tiny_llama, gsm8k_test, tmp_path):
    out = tmp_path / "ab"
    proc = run(tiny_llama, gsm8k_test, out, "--graphs", "off,on", "--engine", f"main={sys.executable}",
               "--engine", f"pr={sys.executable}", "--inject", "pr:off=perturb", *SIDE_BY_SIDE)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["engines"]) == {"main", "pr"}
    assert all(info["transformers"] for info in summary["engines"].values())
    assert {(c["engine"], c["mode"]) for c in summary["cells"]} == {(e, m) for e in ("main", "pr") for m in ("off", "on")}
    assert next(c for c in summary["cells"] if c["engine"] == "pr" and c["mode"] == "off")["inject"] == "perturb"

    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]

    def of(engine):
        return sorted((s for s in samples if s["engine"] == engine and s["mode"] == "off" and not s["twin"]),
                      key=lambda s: s["index"])

    main, pr = of("main"), of("pr")
    assert len(main) == len(pr) == 4
    assert any(a["token_ids"] != b["token_ids"] for a, b in zip(main, pr)), "the perturbed engine generated the same"
    row = next(r for r in summary["ab"] if r["mode"] == "off")
    expected = paired_counts([s["correct"] for s in main], [s["correct"] for s in pr])
    assert (row["a"], row["b"]) == ("main", "pr")
    assert row["flipped_down"] == expected.only_a and row["flipped_up"] == expected.only_b
    assert row["p_value"] == pytest.approx(mcnemar_exact(expected.only_a, expected.only_b))
    assert row["accuracy_a"] == pytest.approx(sum(s["correct"] for s in main) / 4)
    report = (out / "report.md").read_text()
    assert "Engines side by side" in report and "| main | pr |" in report


@pytest.fixture()
def bool_only_engine(tmp_path) -> Path:
    """An interpreter whose transformers' ContinuousBatchingConfig.use_cuda_graph is a bool only, like 5.5.x."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import transformers.generation.configuration_utils as cu\n"
        "cu.ContinuousBatchingConfig.__dataclass_fields__['use_cuda_graph'].type = 'bool | None'\n")
    wrapper = tmp_path / "python-bool-only"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={site}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper


def test_bool_only_engine_skips_varlen_and_decode_with_the_reason(tiny_llama, gsm8k_test, tmp_path,
                                                                  bool_only_engine):
    out = tmp_path / "old"
    proc = run(tiny_llama, gsm8k_test, out, "--graphs", "off,on,varlen,decode", "--engine", f"old={bool_only_engine}")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engines"]["old"]["tuple_graphs"] is False
    cells = {c["mode"]: c for c in summary["cells"]}
    for mode in ("varlen", "decode"):
        assert cells[mode]["verdict"] == "SKIPPED"
        assert "takes only a bool use_cuda_graph" in cells[mode]["reason"], cells[mode]["reason"]
        assert cells[mode]["served_by"].startswith("not run")
    # `on` (graphs on both paths) is expressible: it ran (and is SKIPPED here only for want of CUDA)
    assert "bool" not in cells["on"]["reason"] and cells["on"]["n"] == 4
    assert cells["off"]["verdict"] == "PASS"


def test_engine_axes_make_cells_with_their_own_reference(tiny_llama, gsm8k_test, tmp_path):
    out = tmp_path / "axes"
    proc = run(tiny_llama, gsm8k_test, out, "--graphs", "off,on", "--attn", "sdpa,eager", "--async", "off",
               "--decode-fast-path", "off", *SIDE_BY_SIDE)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    axes = {c["axes"] for c in summary["cells"]}
    assert axes == {"attn=sdpa async=off decode_fast_path=off", "attn=eager async=off decode_fast_path=off"}
    assert len(summary["cells"]) == 4
    runs = summary["runs"].values()
    assert {r["engine"]["attn"] for r in runs} == {"sdpa", "eager"}
    assert all(r["resolved"].get("max_blocks_per_request") == 0 for r in runs)
    assert all(r["resolved"].get("use_async_batching") is False for r in runs)
    assert "| engine | axes |" in (out / "report.md").read_text()
