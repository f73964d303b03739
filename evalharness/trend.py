"""The trend of a history file (`evalharness history FILE [--plot PNG]`): accuracy per run and graph mode, printed
and plotted, one panel per model/task/device (history.py reads and writes the file)."""

from __future__ import annotations

from pathlib import Path

from .history import FINDING_VERDICTS, group_key
from .stats import wilson_ci


def trend(lines: list[dict], model: str | None = None, device: str | None = None) -> dict[tuple, dict[str, list]]:
    """{(model, task, device): {series label: [(date, accuracy, ci_low, ci_high, verdict, transformers)]}}; a series
    is one mode at one max_bt (and engine/axes when there are several)."""
    out: dict[tuple, dict[str, list]] = {}
    for line in lines:
        if (model and line["model"] != model) or (device and line["device"] != device) or not line.get("n"):
            continue
        if line.get("accuracy") is None:  # no sample finished
            continue
        series = out.setdefault(group_key(line), {})
        engine = "" if line.get("engine", "default") == "default" else f"{line['engine']} "
        axes = f" {line['axes']}" if line.get("axes") and line["axes"] != "attn=sdpa" else ""
        label = f"{engine}{line['mode']} max_bt={line['max_bt']}{axes}"
        ci = wilson_ci(line["correct"], line["n"]) or (line["accuracy"], line["accuracy"])
        series.setdefault(label, []).append((line["date"], line["accuracy"], ci[0], ci[1], line["verdict"],
                                             line.get("transformers")))
    return out


def render_trend(lines: list[dict], **kw) -> str:
    groups = trend(lines, **kw)
    if not groups:
        return "history: no runs recorded"
    text = []
    for (model, task, device), series in groups.items():
        text.append(f"{model} | {task} | {device}")
        for label, points in sorted(series.items()):
            text.append(f"  {label}")
            for date, acc, lo, hi, verdict, tf in points:
                text.append(f"    {date}  acc={acc:.3f} [{lo:.3f}, {hi:.3f}]  {verdict:<13} transformers {tf}")
    return "\n".join(text)


def trend_figure(lines: list[dict], **kw):
    """Accuracy (%, 95% CI) per run and mode, one panel per model/task/device, on a Figure object (no pyplot state,
    no global backend switch); runs with a finding are marked and the marker is in the legend."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    groups = trend(lines, **kw)
    fig = Figure(figsize=(9, 3.5 * max(1, len(groups))))
    axes = fig.subplots(max(1, len(groups)), 1, squeeze=False)
    for ax, ((model, task, device), series) in zip(axes[:, 0], groups.items()):
        dates = sorted({p[0] for pts in series.values() for p in pts})
        x_of = {d: i for i, d in enumerate(dates)}
        marked = False
        for label, pts in sorted(series.items()):
            xs = [x_of[p[0]] for p in pts]
            ys = [100 * p[1] for p in pts]
            err = [[100 * (p[1] - p[2]) for p in pts], [100 * (p[3] - p[1]) for p in pts]]
            line = ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
            bad = [(x, y) for x, y, p in zip(xs, ys, pts) if p[4] in FINDING_VERDICTS]
            if bad:
                ax.scatter(*zip(*bad), marker="x", s=80, color=line[0].get_color(), zorder=3)
                marked = True
        ax.set_xticks(range(len(dates)), [d[:16] for d in dates], rotation=30, ha="right", fontsize=7)
        ax.set_xlabel("run (date, UTC)")
        ax.set_ylabel("accuracy, % (95% CI)")
        ax.set_ylim(-2, 102)
        ax.set_title(f"{model} | {task} | {device}", fontsize=9)
        handles, _ = ax.get_legend_handles_labels()
        if marked:
            handles.append(Line2D([], [], marker="x", linestyle="", color="black", markersize=8,
                                  label="finding (FAIL, STALE_GRAPH, ACCURACY_DROP)"))
        ax.legend(handles=handles, fontsize=7, title="graph mode", title_fontsize=7)
    if not groups:
        axes[0, 0].text(0.5, 0.5, "no runs recorded", ha="center")
    fig.tight_layout()
    return fig


def plot_trend(lines: list[dict], out: Path, **kw) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    trend_figure(lines, **kw).savefig(out, dpi=100)
    return out
