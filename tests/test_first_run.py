"""The first run as a new user sees it (CPU, tiny seeded Llama through the real engine): the CPU-sized defaults are
said in one line and applied where nothing was given, both report paths are printed, and Ctrl-C names the folder to
resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def test_cpu_defaults_line_and_report_paths(tiny_llama, gsm8k_test, tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "evalharness", "gsm8k", "--model", str(tiny_llama), "--data",
                           str(gsm8k_test), "--max-bt", "128", "--graphs", "off,on", "--out",
                           str(out), "--no-progress"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert [line for line in lines if "CPU-sized defaults" in line] == [
        "evalharness: no CUDA device: CPU-sized defaults --limit 10 --prompt chat --max-new-tokens 32 --dtype fp32 "
        "(graph modes will be SKIPPED; give these options to override)"]
    assert f"report: {out / 'report.md'}" in lines and f"report: {out / 'report.html'}" in lines
    saved = json.loads((out / "settings.json").read_text())["settings"]
    work = saved["workload"]
    assert (work["limit"], work["prompt"], work["max_new_tokens"], saved["model"]["dtype"]) == (10, "chat", 32, "fp32")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 10 and summary["modes"]["off"]["verdict"] == "PASS"
    assert summary["modes"]["on"]["verdict"] == "SKIPPED"
    # runs are named by their folders on disk
    assert {r["id"] for r in summary["runs"].values()} == {p.name for p in (out / "runs").iterdir()}


def test_ctrl_c_names_the_folder_to_resume(tiny_llama, gsm8k_test, tmp_path):
    # Ctrl-C as at a terminal: SIGINT at its default in the run (a test session started in the background of a shell
    # without job control inherits it ignored, and Python then leaves it ignored: the run would finish unbothered)
    proc = subprocess.Popen([sys.executable, "-m", "evalharness", "gsm8k", "--model", str(tiny_llama), "--data",
                             str(gsm8k_test), "--fewshot", "0", "--max-bt", "128", "--graphs", "off",
                             "--no-progress", "--limit", "50", "--max-new-tokens", "200"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("reports/*/runs/*/worker.log")) and time.monotonic() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    (folder,) = list((tmp_path / "reports").iterdir())
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last == (f"evalharness: interrupted; finished runs are kept in reports/{folder.name} (evalharness gsm8k "
                    f"--resume reports/{folder.name} finishes the run)")
