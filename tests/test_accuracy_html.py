"""report.html (evalharness.html_report): self-contained, escaped, and rendered by headless Chromium.

The Chromium checks skip with the reason where no chromium binary is installed (Debian: apt-get install chromium).
"""

from __future__ import annotations

import html as html_mod
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from evalharness.twin import Mismatch, TwinComparison
from evalharness.config import Axes, ModePlan
from evalharness.html_report import render, write_html
from evalharness.history import Drift
from evalharness.results import RunResult, Sample
from evalharness.summary_doc import Cell, Summary
from evalharness.summary_header import Header
from evalharness.verdict import decide

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)> & "quotes" --> ]]>'


def make_outcomes():
    """off PASS, on STALE_GRAPH (sample 1 differs at token 2, its text carries markup), at two max_bt values."""
    outcomes = []
    for bt in (128, 256):
        texts = ["The answer is 4", EVIL + " 18 eggs"]
        off = RunResult("off", "ok", [Sample(i, "ok", [1, 2, 3, 4], t) for i, t in enumerate(texts)],
                        meta={"generate_s": 2.0})
        twin = RunResult("twin", "ok", [Sample(i, "ok", [1, 2, 3, 4], t) for i, t in enumerate(texts)])
        run = RunResult("run", "ok", [Sample(0, "ok", [1, 2, 3, 4], texts[0]),
                                      Sample(1, "ok", [1, 2, 9, 9], EVIL + " 17 eggs")], meta={"generate_s": 1.0})
        ax = Axes("sdpa")
        mp_off = ModePlan("off", bt, "off", None, None, (False, False), engine="default", axes=ax)
        mp_on = ModePlan("on", bt, "run", "twin", "perturb", (True, True), engine="default", axes=ax)
        outcomes.append((decide(mp_off, off, None, [True, False], None, None), off))
        outcomes.append((decide(mp_on, run, twin, [True, False], off, [True, False]), run))
    return outcomes


def make_summary(outcomes) -> Summary:
    cells = []
    for o, r in outcomes:
        cells.append(Cell(id=o.cell_id, engine=o.engine, axes=o.axes, max_bt=o.max_bt, mode=o.mode,
                          verdict=o.verdict, reason=o.reason, accuracy=o.accuracy,
                          accuracy_ci=list(o.accuracy_ci), n=o.n, correct=o.correct,
                          twin_mismatches=o.twin_mismatches, twin_compared=o.twin_compared,
                          failed_requests=o.failed_requests, p_value=o.p_value, delta_vs_off=o.delta_vs_off,
                          inject=o.inject, tokens_per_s=8.0 / r.meta["generate_s"], samples_per_s=1.0,
                          wall_s=r.meta["generate_s"]))
    info = {"model": EVIL, "data": "d.jsonl", "n": 2, "prompt": "chat, 0-shot", "filter": "flexible-extract",
            "attn": "sdpa", "dtype": "fp32", "max_new_tokens": 8, "thresholds": {"alpha": 0.05, "min_drop": 0.02},
            "versions": {"device": "cpu", "torch": "2", "transformers": "5"}, "command": "evalharness gsm8k " + EVIL,
            "created": "2026-01-01T00:00:00Z", "max_bt": 128, "max_bts": [128], "runs": {}, "exit_code": 1}
    return Summary(Header.from_json(info), tuple(cells), [o for o, _ in outcomes])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    outcomes = make_outcomes()
    path = tmp_path_factory.mktemp("html") / "report.html"
    drift = Drift("128/attn=sdpa/off", "off", 128, "mcnemar", 0.002, 0.8, 0.5, -0.3, 20, 20, "r1", "2026-01-01",
                  "5.5", "5.6", True, 6, 0)
    write_html(path, make_summary(outcomes), drifts=[drift],
               baseline=[{"date": "2026-01-01", "transformers": "5.5"}])
    return path


def test_model_text_is_escaped_and_page_is_self_contained(report):
    page = report.read_text()
    assert "<script" not in page.lower() and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    assert html_mod.escape(EVIL, quote=True) in page
    assert "<img src=x" not in page
    # no network at view time: every src/href is a data URI
    for url in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert url.startswith("data:image/png;base64,"), url[:40]
    assert "http://" not in page.replace("http-equiv", "") and "https://" not in page


def test_sections_figures_and_highlighted_first_difference(report):
    page = report.read_text()
    for eid in ("title", "summary", "cells", "fig-accuracy", "fig-mismatches", "fig-throughput", "flagged",
                "drift", "flagged-128-attn-sdpa-on", "mismatch-128-attn-sdpa-on-1", "cell-256-attn-sdpa-on"):
        assert f'id="{eid}"' in page, eid
    section = page[page.index('id="mismatch-128-attn-sdpa-on-1"'):]
    # token ids around the first differing token (position 2), the differing one marked on both sides
    assert '1 2 <mark class="tok">9</mark> 9' in section and '1 2 <mark class="tok">3</mark> 4' in section
    # the decoded texts differ first at "17" vs "18": the mark starts at that character
    assert "<mark>7</mark>" in section and "<mark>8</mark>" in section
    assert page.count("STALE_GRAPH") >= 2 and "DRIFT" in page


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium is not installed (Debian: apt-get install chromium); the headless render check needs it")


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_chromium_dom_has_expected_elements(report, tmp_path):
    proc = run_chromium(tmp_path, "--dump-dom", report.as_uri())
    dom = proc.stdout
    assert proc.returncode == 0 and "<html" in dom, proc.stderr[-2000:]
    for eid in ("cells", "fig-accuracy", "fig-mismatches", "fig-throughput", "flagged", "drift",
                "mismatch-128-attn-sdpa-on-1"):
        assert f'id="{eid}"' in dom, eid
    assert "<script" not in dom.lower()
    assert len(re.findall(r"<tr id=\"cell-", dom)) == 4


def test_chromium_screenshot_is_not_blank(report, tmp_path):
    shot = tmp_path / "shot.png"
    proc = run_chromium(tmp_path, "--window-size=1280,1600", f"--screenshot={shot}", report.as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    try:
        from PIL import Image, ImageStat
    except ImportError:
        return
    img = Image.open(shot).convert("L")
    assert img.size == (1280, 1600)
    stat = ImageStat.Stat(img)
    assert stat.stddev[0] > 10, "screenshot is (nearly) uniform"
    colors = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50
