"""report.md, from a run's typed `Summary` (summary_doc.py), which it only reads.

Model output and dataset text are untrusted: everything they contribute to Markdown is escaped (HTML entities and
Markdown punctuation), and long text goes into <pre> blocks with HTML escaping, so no output can inject markup.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

from .audit import describe, describe_constants
from .markup import md_escape
from .results import atomic_write_text
from .summary_doc import Summary
from .verdict import FAIL, FINDINGS, legend

def md_code(text: str) -> str:
    """A Markdown code span showing `text` verbatim: inside a code span nothing is markup (CommonMark renders `<`, `&`
    and backslashes as themselves), so escaping would show the escapes; the fence is one backtick longer than any
    backtick run inside, padded where the text starts or ends with one; line breaks become spaces."""
    text = str(text).replace("\r", " ").replace("\n", " ")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or (text.startswith(" ") and text.endswith(" ")) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def pre(text: str) -> str:
    """A <pre> block whose content cannot close it or start markup."""
    return "<pre>" + html.escape(str(text), quote=True) + "</pre>"


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _num(x, fmt: str = "{:.1f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def snippet_around(a: str, b: str, width: int = 80) -> tuple[str, str, int]:
    """The two texts around their first differing character."""
    i = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    lo = max(0, i - width)
    return ("…" if lo else "") + a[lo:i + width], ("…" if lo else "") + b[lo:i + width], i


SMALL_MODELS = {"smollm2-135m": "135M"}


def accuracy_note(summary: Summary) -> str | None:
    """Why every accuracy is (near) zero, where that is the model and not the engine."""
    accs = [c.accuracy for c in summary.cells if c.accuracy is not None]
    size = SMALL_MODELS.get(str(summary.header.model))
    if not accs or (size is None and max(accs) >= 0.02):
        return None
    return (f"Accuracy is {max(accs):.3f} at best: {'a ' + size if size else 'this'} model cannot solve GSM8K's "
            "grade-school arithmetic, so the accuracy columns say nothing about the engine here. The twin check does "
            "not depend on accuracy: every graph run is compared token for token with its padded-eager twin. For an "
            "accuracy that can show a drop, use --model qwen2.5-coder-0.5b (the default with CUDA).")


def markdown(summary: Summary, max_examples: int = 3) -> str:
    h, outcomes, cells = summary.header, summary.outcomes, summary.cells_by_id
    v = h.versions
    lines = [
        "# evalharness GSM8K report",
        "",
        f"- model: {md_escape(h.model)}",
        f"- data: {md_escape(h.data)}, {h.n} samples, prompt {md_escape(h.prompt)}",
        f"- device: {md_escape(v.device or 'unknown')}; torch {md_escape(v.torch or '?')}, transformers "
        f"{md_escape(v.transformers or '?')}",
        f"- attention: {md_escape(h.attn)}; max new tokens {h.max_new_tokens}; "
        f"alpha {h.thresholds.alpha}, min drop {h.thresholds.min_drop}",
        f"- command: {md_code(h.command)}",
        "",
    ]
    note = accuracy_note(summary)
    if note:
        lines += [f"> {md_escape(note)}", ""]
    grouped = len({(o.engine, o.axes) for o in outcomes}) > 1
    lines += [("| engine | axes " if grouped else "") + "| max_bt | mode | verdict | accuracy % (95% CI) | "
              "delta vs off (p) | twin mismatches | failed | tok/s | samples/s | wall s | peak GB |",
              ("|---|---" if grouped else "") + "|---:|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    for o in outcomes:
        cell = cells[o.cell_id]
        ci = o.accuracy_ci
        acc = f"{_pct(o.accuracy)} ({_pct(ci[0])}–{_pct(ci[1])})" if ci else "n/a"
        if o.finished is not None and o.finished != o.n:  # missing samples are not counted as wrong
            acc += f" of {o.finished}/{o.n} finished"
        delta = "—" if o.delta_vs_off is None else f"{100 * o.delta_vs_off:+.1f} (p={o.p_value:.3g})"
        twin = "—" if o.twin_mismatches is None else f"{o.twin_mismatches}/{o.twin_compared}"
        inject = f" [{md_escape(o.inject)}]" if o.inject else ""
        group = f"| {md_escape(o.engine)} | {md_escape(o.axes)} " if grouped else ""
        lines.append(f"{group}| {o.max_bt} | {o.mode}{inject} | **{o.verdict}** | {acc} | {delta} | {twin} | "
                     f"{o.failed_requests} | {_num(cell.tokens_per_s)} | {_num(cell.samples_per_s, '{:.2f}')} | "
                     f"{_num(cell.wall_s)} | {_num(cell.peak_mem_gb, '{:.2f}')} |")
    lines += ["", "## Verdicts", ""]
    for o in outcomes:
        cell = cells[o.cell_id]
        lines.append(f"- {md_escape(o.cell_id)}: **{o.verdict}**: {md_escape(o.reason)}. {md_escape(cell.served_by)}")
        attribution = cell.attribution
        if attribution:
            lines.append(f"  - {md_escape(describe(attribution))}")
        if o.confirmation is not None:
            lines.append(f"  - confirmation: {md_escape(o.confirmation.describe())}")
        if o.stale_constants is not None:
            lines.append(f"  - {md_escape(describe_constants(o.stale_constants))}")
    fails = [o for o in outcomes if o.verdict == FAIL]
    if fails:
        lines += ["", "## FAIL details", "", "| cell | max_bt | mode | error class | first line | worker log |",
                  "|---|---:|---|---|---|---|"]
        for o in fails:
            log = cells[o.cell_id].worker_log
            lines.append(f"| {md_escape(o.cell_id)} | {o.max_bt} | {o.mode} | {md_escape(o.error_class or '')} | "
                         f"{md_escape(o.reason)[:300]} | {md_code(log) if log else '—'} |")
    for o in outcomes:
        if o.verdict not in FINDINGS or not o.comparison or not o.comparison.mismatches:
            continue
        where = f" ({md_escape(o.engine)} {md_escape(o.axes)})" if grouped else ""
        lines += ["", f"## {o.mode} at max_bt {o.max_bt}{where}: first mismatching samples", ""]
        for m in o.comparison.mismatches[:max_examples]:
            a, b, char = snippet_around(m.run_text, m.twin_text)
            lines += [f"### sample {m.index}: first differing token {m.position} (graph run "
                      f"{m.run_tokens[m.position:m.position + 1]} vs twin {m.twin_tokens[m.position:m.position + 1]}), "
                      f"first differing character {char}", "", "graph run:", "", pre(a), "", "padded-eager twin:", "",
                      pre(b), ""]
    if h.ab:
        lines += ["", f"## Engines side by side ({' vs '.join(md_escape(n) for n in h.engines)})", ""]
        for name, engine in h.engines.items():
            lines.append(f"- {md_escape(name)}: transformers {md_escape(engine.transformers or '?')}, "
                         f"{md_escape(engine.path or 'this interpreter')}")
        lines += ["", "| max_bt | axes | mode | A | B | accuracy A % | accuracy B % | delta (McNemar p) | "
                  "samples/s A → B (%) | tok/s A → B (%) | peak GB A / B | verdict A / B |",
                  "|---:|---|---|---|---|---:|---:|---|---|---|---|---|"]
        for r in h.ab:
            delta = "n/a" if r.delta is None else f"{100 * r.delta:+.1f} (p={r.p_value:.3g})"
            sps = (f"{_num(r.samples_per_s_a, '{:.2f}')} → {_num(r.samples_per_s_b, '{:.2f}')} "
                   f"({_num(r.samples_per_s_change_pct, '{:+.1f}')})")
            tps = f"{_num(r.tokens_per_s_a)} → {_num(r.tokens_per_s_b)} ({_num(r.tokens_per_s_change_pct, '{:+.1f}')})"
            mem = f"{_num(r.peak_mem_gb_a, '{:.2f}')} / {_num(r.peak_mem_gb_b, '{:.2f}')}"
            lines.append(f"| {r.max_bt} | {md_escape(r.axes)} | {r.mode} | {md_escape(r.a)} | "
                         f"{md_escape(r.b)} | {_pct(r.accuracy_a)} | {_pct(r.accuracy_b)} | {delta} | {sps} | "
                         f"{tps} | {mem} | {r.verdict_a} / {r.verdict_b} |")
    lines += ["", "## Runs", "", "| run (folder in runs/) | configuration | served | status | generated tokens | wall s "
              "| model load s | worker |", "|---|---|---|---|---:|---:|---:|---|"]
    for key, r in h.runs.items():
        lines.append(f"| {md_code(key if r.id is None else r.id)} | {md_escape(r.config)} | "
                     f"{md_escape(', '.join(r.served))} | {r.status} | "
                     f"{r.generated_tokens} | {_num(r.wall_s)} | {_num(r.load_s)} | {r.worker_pid or '-'} |")
    pool = h.pool
    if pool:  # None when every run came from the cache
        loads = ", ".join(f"{_num(w.load_s)} s" for w in pool.processes if w.load_s is not None)
        mps = sum(bool(w.mps) for w in pool.processes)
        lines += ["", f"Workers: {pool.workers} x {pool.threads_per_worker} CPU thread(s) "
                  f"({md_escape(pool.why)}); {len(pool.processes)} worker process(es), {pool.model_loads} "
                  f"model load(s){f' ({loads})' if loads else ''}"
                  f"{f'; {mps} through an MPS daemon' if mps else ''}. Wall s is the time inside "
                  "generate_batch; a run whose worker had the model loaded already paid no load."]
    lines += ["", legend(), ""]
    return "\n".join(lines)


def write_markdown(path: Path, summary: Summary) -> None:
    atomic_write_text(path, markdown(summary))
