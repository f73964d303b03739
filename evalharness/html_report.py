"""report.html: one self-contained page (no script, no network at view time) next to report.md, from a run's typed
`Summary` (summary_doc.py), which it only reads.

The figures (report_figures.py) are inlined as base64 PNG data URIs. Flagged cells get a side-by-side view of the
graph run and its padded-eager twin: token ids around the first differing token (highlighted), and the decoded texts
with the first differing character highlighted. Every piece of model, dataset or user text goes through html.escape.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

from .audit import describe_constants
from .report_figures import COLORS, figures
from .results import atomic_write_text
from .summary_doc import Cell, Summary
from .verdict import FINDINGS, ModeOutcome, Verdict, legend

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#1f2328;background:#fff;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #d0d7de}h3{font-size:15px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #d0d7de;padding:3px 7px;text-align:left}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{font-weight:600;color:#fff;padding:1px 6px;border-radius:4px}
.figs img{max-width:100%;border:1px solid #d0d7de;margin:6px 0}
.side{display:grid;grid-template-columns:1fr 1fr;gap:12px}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f8fa;padding:8px;border:1px solid #d0d7de;font-size:12px}
mark{background:#ffd33d;color:#000}mark.tok{background:#ff8182}
.meta li{font-size:13px}
"""


def esc(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(text)).strip("-") or "x"


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _num(x, fmt="{:.1f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def _badge(verdict: str) -> str:
    return f'<span class="verdict" style="background:{COLORS.get(verdict, "#57606a")}">{esc(verdict)}</span>'


def _confirmation(cell: Cell) -> str:
    """Runs compared with the twin and which reproduced (— when nothing needed confirming)."""
    c = cell.confirmation
    if not c:
        return "—"
    return esc(f"{c['status']}: {c['runs_compared'] - c['runs_matching_twin']} of {c['runs_compared']} runs differ"
               + (f"; twin re-run {'differs' if any(t['mismatches'] for t in c['twin_reruns']) else 'identical'}"
                  if c["twin_reruns"] else ""))


def _first_char_diff(a: str, b: str) -> int:
    return next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _highlight_text(text: str, start: int, context: int = 400) -> str:
    """Escaped text with the span from `start` to the next whitespace (about one token) marked."""
    m = re.compile(r"\S*").match(text, start)
    end = max(start + 1, m.end() if m else start + 1)
    lo = max(0, start - context)
    head = ("…" if lo else "") + text[lo:start]
    return f"{esc(head)}<mark>{esc(text[start:end]) or '∅'}</mark>{esc(text[end:end + context])}" + \
        ("…" if end + context < len(text) else "")


def _token_strip(tokens: list[int], pos: int, width: int = 8) -> str:
    lo = max(0, pos - width)
    parts = ["…"] if lo else []
    for i in range(lo, min(len(tokens), pos + width + 1)):
        parts.append(f'<mark class="tok">{tokens[i]}</mark>' if i == pos else str(tokens[i]))
    if pos >= len(tokens):
        parts.append('<mark class="tok">(end)</mark>')
    elif pos + width + 1 < len(tokens):
        parts.append("…")
    return " ".join(parts)


def mismatch_section(o: ModeOutcome, max_examples: int = 3) -> str:
    out = []
    for m in o.comparison.mismatches[:max_examples]:
        char = _first_char_diff(m.run_text, m.twin_text)
        sid = f"mismatch-{_slug(o.cell_id)}-{m.index}"
        run_tok = m.run_tokens[m.position] if m.position < len(m.run_tokens) else "(end)"
        twin_tok = m.twin_tokens[m.position] if m.position < len(m.twin_tokens) else "(end)"
        out.append(
            f'<div class="mismatch" id="{sid}"><h3>sample {m.index}: first differing token at position {m.position} '
            f"(graph run {esc(run_tok)} vs twin {esc(twin_tok)}), first differing character {char}</h3>"
            '<div class="side"><div><b>graph run</b>'
            f'<pre class="tokens">{_token_strip(m.run_tokens, m.position)}</pre>'
            f'<pre class="text run-text">{_highlight_text(m.run_text, char)}</pre></div>'
            '<div><b>padded-eager twin</b>'
            f'<pre class="tokens">{_token_strip(m.twin_tokens, m.position)}</pre>'
            f'<pre class="text twin-text">{_highlight_text(m.twin_text, char)}</pre></div></div></div>')
    return "\n".join(out)


def render(summary: Summary, drifts: list | None = None, baseline: list[dict] | None = None) -> str:
    h = summary.header
    v = h.versions
    figs = figures(summary)
    flagged = [o for o in summary.outcomes if o.verdict in FINDINGS]
    drifted = [d for d in (drifts or []) if getattr(d, "significant", False)]
    verdicts = {}
    for c in summary.cells:
        verdicts[c.verdict] = verdicts.get(c.verdict, 0) + 1
    overall = max(flagged, key=lambda o: Verdict(o.verdict).severity).verdict if flagged else (
        "DRIFT" if drifted else "PASS")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">",
        f"<title>evalharness report: {esc(h.model)}</title><style>{CSS}</style></head><body>",
        f'<h1 id="title">evalharness GSM8K report {_badge(overall)}</h1>',
        '<ul class="meta" id="summary">',
        f"<li>model: {esc(h.model)}</li>",
        f"<li>data: {esc(h.data)}, {esc(h.n)} samples, prompt {esc(h.prompt)}, filter {esc(h.filter)}</li>",
        f"<li>device: {esc(v.device or 'unknown')}; torch {esc(v.torch or '?')}, transformers "
        f"{esc(v.transformers or '?')}</li>",
        f"<li>attention {esc(h.attn)}, dtype {esc(h.dtype)}, max new tokens {esc(h.max_new_tokens)}; alpha "
        f"{esc(h.thresholds.alpha)}, min drop {esc(h.thresholds.min_drop)}</li>",
        f"<li>verdicts: {', '.join(f'{esc(k)} {n}' for k, n in sorted(verdicts.items()))}"
        f"{f'; drift in {len(drifted)} cells' if drifts is not None else ''}</li>",
        f"<li>command: <code>{esc(h.command)}</code></li>",
        f"<li>created: {esc(h.created)}</li></ul>",
        '<h2>Cells</h2><table id="cells"><thead><tr><th>cell</th><th>max_bt</th><th>mode</th><th>verdict</th>'
        "<th>accuracy % (95% CI)</th><th>delta vs off (p)</th><th>twin mismatches</th><th>failed</th><th>tok/s</th>"
        "<th>samples/s</th><th>wall s</th><th>confirmation</th><th>reason</th></tr></thead><tbody>",
    ]
    for c in summary.cells:
        ci = c.accuracy_ci
        acc = f"{_pct(c.accuracy)} ({_pct(ci[0])}–{_pct(ci[1])})" if ci else "n/a"
        if c.finished is not None and c.finished != c.n:  # missing samples are not wrong answers
            acc += f" of {esc(c.finished)}/{esc(c.n)} finished"
        delta = "—" if c.delta_vs_off is None else f"{100 * c.delta_vs_off:+.1f} (p={c.p_value:.3g})"
        twin = "—" if c.twin_mismatches is None else f"{c.twin_mismatches}/{c.twin_compared}"
        inject = f" [{esc(c.inject)}]" if c.inject else ""
        parts.append(f'<tr id="cell-{_slug(c.id)}"><td>{esc(c.id)}</td><td class="num">{esc(c.max_bt)}</td>'
                     f"<td>{esc(c.mode)}{inject}</td><td>{_badge(c.verdict)}</td><td class=\"num\">{acc}</td>"
                     f"<td class=\"num\">{delta}</td><td class=\"num\">{twin}</td>"
                     f"<td class=\"num\">{esc(c.failed_requests)}</td>"
                     f"<td class=\"num\">{_num(c.tokens_per_s)}</td>"
                     f"<td class=\"num\">{_num(c.samples_per_s, '{:.2f}')}</td>"
                     f"<td class=\"num\">{_num(c.wall_s)}</td><td>{_confirmation(c)}</td>"
                     f"<td>{esc(c.reason)}</td></tr>")
    parts.append("</tbody></table>")
    parts.append('<h2>Figures</h2><div class="figs">')
    alts = {"fig-accuracy": "accuracy vs max_bt per graph mode with 95% CIs",
            "fig-mismatches": "twin mismatches per cell", "fig-throughput": "throughput per cell"}
    for fid, uri in figs.items():
        parts.append(f'<figure><img id="{fid}" alt="{esc(alts[fid])}" src="{uri}"></figure>')
    parts.append("</div>")
    if drifts is not None:
        parts.append('<h2>Drift vs the last passing run</h2><div id="drift">')
        if baseline is None:
            parts.append("<p>No earlier passing run on this model/task/device: this run is the first baseline.</p>")
        else:
            parts.append(f"<p>Baseline: run of {esc(baseline[0].get('date'))} (transformers "
                         f"{esc(baseline[0].get('transformers'))}).</p><table><tr><th>cell</th><th>test</th>"
                         "<th>baseline %</th><th>now %</th><th>delta</th><th>p</th><th>drift</th></tr>")
            for d in drifts:
                parts.append(f"<tr><td>{esc(d.cell)}</td><td>{esc(d.test)}</td><td class=\"num\">"
                             f"{_pct(d.baseline_accuracy)}</td><td class=\"num\">{_pct(d.accuracy)}</td>"
                             f"<td class=\"num\">{100 * d.delta:+.1f}</td><td class=\"num\">{d.p_value:.3g}</td>"
                             f"<td>{_badge('DRIFT') if d.significant else 'no'}</td></tr>")
            parts.append("</table>")
        parts.append("</div>")
    parts.append('<h2>Flagged cells</h2><div id="flagged">')
    if not flagged:
        parts.append("<p>No cell has a finding.</p>")
    for o in flagged:
        parts.append(f'<section class="flagged-cell" id="flagged-{_slug(o.cell_id)}"><h3>{esc(o.cell_id)}: '
                     f"{_badge(o.verdict)} {esc(o.reason)}</h3>")
        if o.confirmation is not None:
            parts.append(f'<p class="confirmation">confirmation: {esc(o.confirmation.describe())}</p>')
        if o.stale_constants is not None:
            parts.append(f'<p class="constants">{esc(describe_constants(o.stale_constants))}</p>')
        if o.comparison and o.comparison.mismatches:
            parts.append(mismatch_section(o))
        parts.append("</section>")
    parts.append("</div>")
    parts.append(f'<p style="font-size:12px;color:#57606a">{esc(legend())} Highlighted: the first differing token id and the first differing\n'
                 "character of the decoded text.</p></body></html>")
    return "\n".join(parts)


def write_html(path: Path, summary: Summary, drifts: list | None = None, baseline: list[dict] | None = None) -> None:
    atomic_write_text(path, render(summary, drifts=drifts, baseline=baseline))
