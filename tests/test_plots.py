"""Figures (report.html and `evalharness history --plot`): labelled axes with units, accuracy in percent like the
tables, a legend for every marker and colour, integer ticks for counts, and no global matplotlib state touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_accuracy_html import make_outcomes, make_summary

from evalharness.trend import trend_figure
from evalharness.report_figures import build_figures


def _ax(fig):
    (ax,) = fig.axes if len(fig.axes) == 1 else fig.axes[:1]
    return ax


def test_report_figures_are_labelled_in_the_tables_units():
    summary = make_summary(make_outcomes())
    figs = build_figures(summary)
    acc = _ax(figs["fig-accuracy"])
    assert "max_batch_tokens" in acc.get_xlabel() and "%" in acc.get_ylabel()
    ys = [y for bars in acc.containers for y in bars.lines[0].get_ydata()]  # the points, not the error bars
    assert max(ys) > 1  # percent, as report.md's "accuracy %" column, not a 0..1 fraction
    assert max(ys) == 100 * max(c.accuracy for c in summary.cells)
    assert [t.get_text() for t in acc.get_legend().get_texts()] == ["off", "on"]
    mism = _ax(figs["fig-mismatches"])
    assert mism.get_xlabel() and "count" in mism.get_ylabel()
    ticks = mism.get_yticks()
    assert all(float(t).is_integer() for t in ticks), ticks
    assert {t.get_text() for t in mism.get_legend().get_texts()} == {"PASS", "STALE_GRAPH"}
    tput = _ax(figs["fig-throughput"])
    assert tput.get_xlabel() and "tokens / s" in tput.get_ylabel() and tput.get_legend() is not None


def _line(run_id, date, verdict, correct):
    return {"run_id": run_id, "date": date, "model": "m", "task": "t", "device": "cpu", "mode": "on", "max_bt": 128,
            "engine": "default", "axes": "attn=sdpa", "verdict": verdict, "accuracy": correct / 10, "n": 10,
            "correct": correct, "transformers": "5"}


def test_history_figure_legends_the_finding_marker():
    fig = trend_figure([_line("a", "2026-01-01", "PASS", 5), _line("b", "2026-01-02", "STALE_GRAPH", 4)])
    ax = fig.axes[0]
    assert ax.get_xlabel() and "%" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "on max_bt=128" and any(label.startswith("finding") for label in labels)


def test_drawing_leaves_the_matplotlib_backend_alone():
    code = ("import matplotlib; matplotlib.use('pdf')\n"
            "from test_accuracy_html import make_outcomes, make_summary\n"
            "from evalharness.report_figures import figures\n"
            "from evalharness.trend import trend_figure\n"
            "figures(make_summary(make_outcomes())); trend_figure([])\n"
            "import matplotlib.pyplot as plt\n"
            "print(matplotlib.get_backend(), len(plt.get_fignums()))\n")
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tests, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["pdf", "0"]
