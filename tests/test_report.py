"""report.md: untrusted model and dataset text can never produce raw HTML tags or Markdown structure."""

from __future__ import annotations

import re

from evalharness.config import ModePlan
from evalharness.report import markdown, md_code, md_escape, pre, snippet_around, write_markdown
from evalharness.summary_doc import Cell, Summary
from evalharness.summary_header import Header
from evalharness.results import RunResult, Sample
from evalharness.verdict import decide

EVIL = [
    "<script>alert('x')</script>",
    "</pre><img src=x onerror=alert(1)>",
    "| injected | table |\n# Injected heading\n<b>bold</b>",
    "[click](javascript:alert(1)) ![img](http://evil/x.png) **strong** `code`",
    "<!-- comment --> &lt;already&gt; <iframe src='http://evil'></iframe>",
]


# the run-level keys a summary always has; each test overrides what it checks
HEADER = {"model": "m", "data": "d", "n": 1, "prompt": "p", "filter": "flexible-extract", "attn": "sdpa",
          "dtype": "fp32", "max_new_tokens": 1, "max_bt": 384, "max_bts": [384],
          "thresholds": {"alpha": 0.05, "min_drop": 0.02}, "versions": {}, "runs": {}, "command": "c",
          "created": "2026-01-01T00:00:00Z", "exit_code": 0}


def tags(text: str) -> set[str]:
    return {m.lower() for m in re.findall(r"<\s*/?\s*([a-zA-Z!][\w-]*)", text)}


def test_md_escape_neutralises_markup():
    for text in EVIL:
        out = md_escape(text)
        assert tags(out) == set()
        assert "\n" not in out and "\r" not in out
        assert "|" not in out.replace("\\|", "")  # every pipe is escaped: no new table cell
    assert md_escape("a*b_c") == r"a\*b\_c"
    assert md_escape("<b>") == "&lt;b&gt;"


def test_pre_cannot_be_closed_from_inside():
    out = pre("</pre><script>x</script>\n\"q\" 'a' & b")
    assert out.startswith("<pre>") and out.endswith("</pre>")
    assert out.count("<pre>") == 1 and out.count("</pre>") == 1
    assert tags(out) == {"pre"}
    assert "&lt;/pre&gt;&lt;script&gt;" in out and "&amp; b" in out


def test_snippet_around_first_difference():
    a, b, i = snippet_around("x" * 200 + "AAA", "x" * 200 + "BBB", width=10)
    assert i == 200
    assert a == "…" + "x" * 10 + "AAA" and b == "…" + "x" * 10 + "BBB"
    assert snippet_around("same", "same") == ("same", "same", 4)


def _report(evil: str) -> str:
    n = len(EVIL)
    mp = ModePlan(mode="on", max_bt=384, run="r1", twin="t1", fault=None, graphs_effective=(True, True))
    run = RunResult(key="r1", status="ok", samples=[Sample(i, "ok", [1, 2, i], evil + f" run {i}") for i in range(n)])
    twin = RunResult(key="t1", status="ok", samples=[Sample(i, "ok", [1, 3, i], evil + f" twin {i}")
                                                     for i in range(n)])
    off_mp = ModePlan(mode="off", max_bt=384, run="o1", twin=None, fault=None, graphs_effective=(False, False))
    off = RunResult(key="o1", status="crash", samples=[Sample(i, "missing") for i in range(n)],
                    error=evil, error_class="sigabrt")
    outcomes = [decide(off_mp, off, None, [False] * n, off, [False] * n),
                decide(mp, run, twin, [True] * n, off, [False] * n)]
    assert [o.verdict for o in outcomes] == ["FAIL", "STALE_GRAPH"]
    info = {
        "model": evil, "data": evil, "n": n, "prompt": evil, "attn": "sdpa", "max_new_tokens": 16,
        "thresholds": {"alpha": 0.05, "min_drop": 0.02}, "command": evil,
        "versions": {"device": evil, "torch": evil, "transformers": "5"},
        "runs": {"r1": {"config": evil, "engine": {}, "served": [evil], "status": "ok", "generated_tokens": 3,
                        "wall_s": 1.0}},
    }
    return markdown(summary_of(info, outcomes, tokens_per_s=1.0, samples_per_s=0.5, wall_s=2.0, served_by=evil))


def summary_of(info: dict, outcomes, **cell) -> Summary:
    """A Summary whose cells are the outcomes' with `cell`'s fields (the rest as the outcome gives them)."""
    return Summary(Header.from_json({**HEADER, **info}), tuple(Cell(id=o.cell_id, engine=o.engine, axes=o.axes, max_bt=o.max_bt, mode=o.mode,
                                    verdict=o.verdict, accuracy=o.accuracy, n=o.n, **cell) for o in outcomes),
                   outcomes)


def test_report_escapes_untrusted_text_everywhere():
    for evil in EVIL:
        md = _report(evil)
        # the command line is a code span (verbatim, inert: test_command_renders_verbatim_in_its_code_span)
        md = "\n".join(line for line in md.splitlines() if not line.startswith("- command: "))
        assert tags(md) <= {"pre"}, tags(md)
        assert md.count("<pre>") == md.count("</pre>") > 0
        # outside <pre> blocks (raw HTML to Markdown, closed only by a literal </pre>) every heading is the report's
        in_pre = False
        for line in md.splitlines():
            if line.startswith("<pre>"):
                in_pre = True
            if not in_pre and line.startswith("#"):
                assert re.match(r"#+ (evalharness GSM8K report|Verdicts|FAIL details|Runs|on at max_bt 384|sample \d)",
                                line), line
            if "</pre>" in line:
                in_pre = False


def test_rendered_report_has_no_injected_html():
    markdown_it = __import__("pytest").importorskip("markdown_it")
    renderer = markdown_it.MarkdownIt("commonmark").enable("table")
    for evil in EVIL:
        html = renderer.render(_report(evil))
        assert not {"script", "img", "iframe", "b", "a", "!--"} & tags(html), tags(html)
        assert "<h1>Injected heading" not in html
        assert tags(html) <= {"h1", "h2", "h3", "p", "ul", "li", "strong", "code", "pre", "table", "thead", "tbody",
                              "tr", "th", "td", "em"}


def test_report_shows_the_first_mismatches(tmp_path):
    md = _report("plain text")
    assert "## on at max_bt 384: first mismatching samples" in md
    assert "### sample 0: first differing token 1 (graph run [2] vs twin [3])" in md
    assert "<pre>plain text run 0</pre>" in md and "<pre>plain text twin 0</pre>" in md
    assert "| 384 | on | **STALE_GRAPH** |" in md
    assert "## FAIL details" in md and "sigabrt" in md
    path = tmp_path / "report.md"
    mp = ModePlan(mode="off", max_bt=384, run="o1", twin=None, fault=None, graphs_effective=(False, False))
    r = RunResult(key="o1", status="ok", samples=[Sample(0, "ok", [1], "x")])
    o = decide(mp, r, None, [True], r, [True])
    info = {"model": "m", "data": "d", "n": 1, "prompt": "p", "attn": "sdpa", "max_new_tokens": 1,
            "thresholds": {"alpha": 0.05, "min_drop": 0.02}, "command": "c", "versions": {}, "runs": {}}
    write_markdown(path, summary_of(info, [o], served_by="s"))
    text = path.read_text()
    assert "| 384 | off | **PASS** | 100.0 (" in text and "n/a" in text


def test_command_renders_verbatim_in_its_code_span():
    """report.md's command is what was typed: no backslashes before dashes, no entities, nothing rendered as HTML."""
    markdown_it = __import__("pytest").importorskip("markdown_it")
    renderer = markdown_it.MarkdownIt("commonmark")
    for command in ["evalharness gsm8k --max-bt 384 --data '<img src=x>' --out a_b*c", *EVIL]:
        html = renderer.render(md_code(command))
        assert html.count("<code>") == 1 and tags(html) == {"p", "code"}, html
        code = re.search(r"<code>(.*)</code>", html, re.S).group(1)
        import html as html_mod

        assert html_mod.unescape(code) == command.replace("\n", " ")


def test_zero_accuracy_of_the_small_default_model_is_explained():
    from evalharness.report import accuracy_note

    def summary(model, *accuracies):
        cells = tuple(Cell(id=f"{i}/off", engine="default", axes="", max_bt=i, mode="off", verdict="PASS",
                           accuracy=a) for i, a in enumerate(accuracies))
        return Summary(Header.from_json({**HEADER, "model": model}), cells, [])

    note = accuracy_note(summary("smollm2-135m", 0.0, None))
    assert "135M" in note and "twin" in note and "qwen2.5-coder-0.5b" in note
    assert accuracy_note(summary("some/model", 0.0)) is not None  # any model at zero
    assert accuracy_note(summary("qwen2.5-coder-0.5b", 0.24)) is None
    md = _report("x")
    assert "cannot solve GSM8K" not in md  # this report's model is not at zero accuracy
