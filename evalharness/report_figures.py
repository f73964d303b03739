"""report.html's figures: matplotlib PNGs (inlined as base64 data URIs), accuracy vs max_bt per graph mode with 95 %
Wilson CIs, twin mismatches per cell, throughput per cell. Drawn on Figure objects: no pyplot state, no global backend
switch.
"""

from __future__ import annotations

import base64
import io

from .summary_doc import Cell, Summary
from .verdict import Verdict

# badge colours: every verdict's own, and DRIFT (a history finding, not a cell verdict)
COLORS = {**{v.value: v.colour for v in Verdict}, "DRIFT": Verdict.ACCURACY_DROP.colour}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _group_label(c: Cell) -> str:
    parts = [p for p in (c.engine if c.engine not in (None, "default") else "", c.axes) if p]
    return " ".join(parts)


def _verdict_legend(ax, cells: list[Cell]) -> None:
    """One legend entry per verdict colour the bars use."""
    from matplotlib.patches import Patch

    verdicts = list(dict.fromkeys(c.verdict for c in cells))
    if verdicts:
        ax.legend(handles=[Patch(color=COLORS.get(v, "#57606a"), label=v) for v in verdicts], fontsize=7,
                  title="verdict", title_fontsize=7)


def build_figures(summary: Summary) -> dict:
    """{figure id: matplotlib Figure}: drawn on Figure objects (no pyplot state, no global backend switch).
    Accuracy is in percent, as in the tables; counts have integer ticks; every axis says its unit."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    cells = [c for c in summary.cells if c.n and c.accuracy is not None]
    figs = {}
    groups = len({_group_label(c) for c in cells}) > 1

    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    series: dict[str, list[Cell]] = {}
    for c in cells:
        label = c.mode + (f" ({_group_label(c)})" if groups else "")
        series.setdefault(label, []).append(c)
    bts = sorted({c.max_bt for c in cells})
    for i, (label, cs) in enumerate(series.items()):
        cs = sorted(cs, key=lambda c: c.max_bt)
        dodge = (i - (len(series) - 1) / 2) * 0.06
        xs = [bts.index(c.max_bt) + dodge for c in cs]
        ys = [100 * c.accuracy for c in cs]
        lo = [100 * (c.accuracy - (c.accuracy_ci or [c.accuracy] * 2)[0]) for c in cs]
        hi = [100 * ((c.accuracy_ci or [c.accuracy] * 2)[1] - c.accuracy) for c in cs]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label)
    ax.set_xticks(range(len(bts)), [str(b) for b in bts])
    ax.set_xlim(-0.5, max(0.5, len(bts) - 0.5))
    ax.set_xlabel("max_batch_tokens (tokens per forward step)")
    ax.set_ylabel("accuracy, % (95% Wilson CI)")
    ax.set_title("Accuracy vs max_bt per graph mode")
    ax.set_ylim(-2, 102)
    if series:
        ax.legend(fontsize=8, title="graph mode", title_fontsize=8)
    fig.tight_layout()
    figs["fig-accuracy"] = fig

    cells = [c for c in summary.cells if c.n]
    labels = [c.id for c in cells]
    width = max(6, 0.45 * len(labels) + 2)
    fig = Figure(figsize=(width, 3.8))
    ax = fig.add_subplot()
    mism = [c.twin_mismatches or 0 for c in cells]
    ax.bar(range(len(labels)), mism, color=[COLORS.get(c.verdict, "#57606a") for c in cells])
    for i, c in enumerate(cells):
        if c.twin_compared is not None:
            ax.annotate(f"{c.twin_mismatches or 0}/{c.twin_compared}", (i, mism[i]), ha="center",
                        va="bottom", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylim(0, max([1] + mism) * 1.15)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("cell (max_bt/mode)")
    ax.set_ylabel("samples differing from twin (count)")
    ax.set_title("Twin mismatches per cell (label: differing/compared)")
    _verdict_legend(ax, cells)
    fig.tight_layout()
    figs["fig-mismatches"] = fig

    fig = Figure(figsize=(width, 3.8))
    ax = fig.add_subplot()
    tps = [c.tokens_per_s or 0 for c in cells]
    ax.bar(range(len(labels)), tps, color="#0969da", label="generated tokens / s (graph or padded-eager run)")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_xlabel("cell (max_bt/mode)")
    ax.set_ylabel("throughput, generated tokens / s")
    ax.set_title("Throughput per cell")
    if cells:
        ax.legend(fontsize=7)
    fig.tight_layout()
    figs["fig-throughput"] = fig
    return figs


def figures(summary: Summary) -> dict[str, str]:
    """{figure id: PNG data URI}."""
    return {name: _png(fig) for name, fig in build_figures(summary).items()}
