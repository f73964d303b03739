"""Baselines and history: one JSONL line per cell per run, and drift against the last run that passed.

A history file is append-only JSONL. Every `evalharness gsm8k --history FILE` run appends one line per cell (engine,
axes, max_bt, mode) carrying the verdict, accuracy, n, correct count and the per-sample correctness vector (a string
of 0/1 in sample order), plus what identifies the comparison: model, task, device and a fingerprint of the exact
samples (prompts). Lines of one run share `run_id`.

Drift: each cell of the new run is compared with the same cell of the most recent earlier run on the same
model/task/device whose cells had no finding (no STALE_GRAPH, ACCURACY_DROP or FAIL). When both runs scored the same
samples (same fingerprint and length) the test is paired, exact McNemar on the discordant samples; otherwise it is
Fisher's exact two-proportion test. A p-value below alpha (and a change of at least `min_change`) is drift, reported
even when every twin matched: it catches changes that move graph and eager paths together.

Nothing here runs an engine; everything works on plain dicts, so history files can be analysed anywhere.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from .stats import mcnemar_exact, paired_counts, two_proportion_exact
from .verdict import FINDINGS

FINDING_VERDICTS = tuple(v.value for v in FINDINGS)
HISTORY_NAME = "history.jsonl"


def cell_key(line: dict) -> tuple:
    return (line.get("engine", "default"), line.get("axes", ""), int(line["max_bt"]), line["mode"])


def group_key(line: dict) -> tuple:
    return (line["model"], line["task"], line["device"])


def lines_from_summary(summary, per_sample: dict[str, list[bool]] | None = None,
                       samples_id: str | None = None, run_id: str | None = None, date: str | None = None) -> list[dict]:
    """History lines for one run's summary_doc.Summary, which they only read. `per_sample` maps cell id -> correctness
    per sample index; `samples_id` identifies the exact samples scored (prompts fingerprint); without it the data
    label, prompt and n stand in."""
    h = summary.header
    versions = h.versions
    date = date or h.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    run_id = run_id or f"{date}-{os.getpid()}"
    samples_id = samples_id or f"{h.task_label} | n={h.n}"
    out = []
    for c in summary.cells:
        vector = (per_sample or {}).get(c.id)
        out.append({
            "run_id": run_id, "date": date, "model": h.model, "task": h.task_label,
            "device": versions.device or "unknown", "transformers": c.transformers or versions.transformers,
            "torch": versions.torch, "engine": c.engine,
            "axes": c.axes, "max_bt": c.max_bt, "mode": c.mode, "cell": c.id,
            "verdict": c.verdict, "accuracy": c.accuracy, "n": c.n, "correct": c.correct,
            "finished": c.finished,
            "twin_mismatches": c.twin_mismatches, "tokens_per_s": c.tokens_per_s,
            "samples_id": samples_id,
            "per_sample": "".join("1" if x else "0" for x in vector) if vector is not None else None,
        })
    return out


def lines_for_run(summary, task, out: Path, date: str | None = None) -> list[dict]:
    """History lines for a run's summary_doc.Summary (samples fingerprinted by the exact prompts and targets)."""
    import hashlib

    blob = json.dumps({"prompts": task.prompts, "targets": task.targets()}, sort_keys=True, default=str)
    samples_id = hashlib.sha256(blob.encode()).hexdigest()[:16]
    per_sample = {o.cell_id: list(o.per_sample) for o in summary.outcomes if o.ran}
    run_id = f"{summary.header.created}-{Path(out).name}-{uuid.uuid4().hex[:8]}"
    return lines_from_summary(summary, per_sample, samples_id=samples_id, run_id=run_id, date=date)


def append(path: Path, lines: list[dict]) -> None:
    """Append whole lines in one write; a torn last line left by a killed writer is ended first, so it stays one
    unreadable line (skipped when read back) instead of swallowing the next one."""
    path = resolve_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torn = False
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(("\n" if torn else "") + "".join(json.dumps(line, sort_keys=True, default=str) + "\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())


def resolve_path(path: Path) -> Path:
    """A folder means FOLDER/history.jsonl."""
    path = Path(path)
    return path / HISTORY_NAME if path.is_dir() or (not path.suffix and not path.exists()) else path


def ensure_appendable(path: Path) -> Path:
    """Check before a run that its history file can be appended to (an error after an hour of engine runs would lose
    the record); UsageError otherwise."""
    from .config import UsageError

    target = resolve_path(path)
    if target.is_dir():
        raise UsageError(f"--history {path}: {target} is a folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a", encoding="utf-8"):
            pass
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"--history {path}: cannot append to {target} (a folder above it is a file)")
    except OSError as e:
        raise UsageError(f"--history {path}: cannot append to {target} ({e.strerror or e})")
    return target


def load(path: Path) -> list[dict]:
    path = resolve_path(path)
    if not path.exists():
        return []
    rows = []
    for text in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not text.endswith("\n") or not text.strip():
            continue
        try:
            rows.append(json.loads(text))
        except json.JSONDecodeError:
            continue  # a torn line from a killed writer
    return [r for r in rows if isinstance(r, dict) and "run_id" in r]


def runs(lines: list[dict]) -> list[list[dict]]:
    """Lines grouped by run_id, in file order."""
    order: dict[str, list[dict]] = {}
    for line in lines:
        order.setdefault(line["run_id"], []).append(line)
    return list(order.values())


def passed(run: list[dict]) -> bool:
    return not any(line["verdict"] in FINDING_VERDICTS for line in run)


def baseline_for(history: list[dict], current: list[dict]) -> list[dict] | None:
    """The most recent earlier run on the same model/task/device that passed (None: first run)."""
    if not current:
        return None
    key, run_id = group_key(current[0]), current[0]["run_id"]
    for run in reversed(runs(history)):
        if run[0]["run_id"] != run_id and group_key(run[0]) == key and passed(run):
            return run
    return None


@dataclass
class Drift:
    cell: str
    mode: str
    max_bt: int
    test: str  # "mcnemar" (paired on the same samples) or "fisher" (two proportions)
    p_value: float
    baseline_accuracy: float
    accuracy: float
    delta: float
    baseline_n: int
    n: int
    baseline_run: str
    baseline_date: str
    baseline_transformers: str | None
    transformers: str | None
    significant: bool
    lost: int | None = None  # paired only: right in the baseline, wrong now
    gained: int | None = None  # paired only: wrong in the baseline, right now

    def describe(self) -> str:
        what = "DRIFT" if self.significant else "no drift"
        flips = f", {self.lost} lost / {self.gained} gained" if self.test == "mcnemar" else ""
        return (f"{self.cell}: {what}: accuracy {self.baseline_accuracy:.3f} -> {self.accuracy:.3f} "
                f"({self.delta:+.3f}; {self.test} p={self.p_value:.3g}{flips}) vs run of {self.baseline_date} "
                f"(transformers {self.baseline_transformers} -> {self.transformers})")

    def to_json(self) -> dict:
        return asdict(self)


def compare_cell(base: dict, cur: dict, alpha: float = 0.05, min_change: float = 0.0) -> Drift | None:
    """Drift test of one cell against its baseline line; None when either side scored no samples."""
    if not base.get("n") or not cur.get("n"):
        return None
    if any(line.get("finished", line["n"]) != line["n"] for line in (base, cur)):
        return None  # missing samples are not wrong answers: no drift test on a partial run
    a, b = base.get("per_sample"), cur.get("per_sample")
    paired = (a is not None and b is not None and len(a) == len(b) and base.get("samples_id") == cur.get("samples_id"))
    lost = gained = None
    if paired:
        counts = paired_counts([c == "1" for c in a], [c == "1" for c in b])
        lost, gained = counts.only_a, counts.only_b
        p, test = mcnemar_exact(lost, gained), "mcnemar"
        base_acc, acc = (counts.both + counts.only_a) / counts.n, (counts.both + counts.only_b) / counts.n
    else:
        p, test = two_proportion_exact(base["correct"], base["n"], cur["correct"], cur["n"]), "fisher"
        base_acc, acc = base["correct"] / base["n"], cur["correct"] / cur["n"]
    delta = acc - base_acc
    return Drift(cell=cur.get("cell") or "/".join(map(str, cell_key(cur))), mode=cur["mode"], max_bt=cur["max_bt"],
                 test=test, p_value=p, baseline_accuracy=base_acc, accuracy=acc, delta=delta, baseline_n=base["n"],
                 n=cur["n"], baseline_run=base["run_id"], baseline_date=base["date"],
                 baseline_transformers=base.get("transformers"), transformers=cur.get("transformers"),
                 significant=p < alpha and abs(delta) >= min_change and delta != 0, lost=lost, gained=gained)


def compare(history: list[dict], current: list[dict], alpha: float = 0.05,
            min_change: float = 0.0) -> tuple[list[dict] | None, list[Drift]]:
    """(baseline run or None, one Drift per cell present in both runs)."""
    base = baseline_for(history, current)
    if base is None:
        return None, []
    by_key = {cell_key(line): line for line in base}
    drifts = []
    for cur in current:
        old = by_key.get(cell_key(cur))
        d = compare_cell(old, cur, alpha, min_change) if old else None
        if d is not None:
            drifts.append(d)
    return base, drifts


def drift_markdown(base: list[dict] | None, drifts: list[Drift], path: Path) -> str:
    from .markup import md_escape

    lines = ["", "## Drift vs the last passing run", ""]
    if base is None:
        return "\n".join(lines + [f"No earlier passing run on this model/task/device in `{md_escape(path)}`: this "
                                  "run is the first baseline.", ""])
    flagged = [d for d in drifts if d.significant]
    lines.append(f"Baseline: run of {md_escape(base[0]['date'])} (transformers "
                 f"{md_escape(base[0].get('transformers'))}); {len(flagged)} of {len(drifts)} cells drifted.")
    lines += ["", "| cell | test | baseline % | now % | delta | p | drift |", "|---|---|---:|---:|---:|---:|---|"]
    for d in drifts:
        lines.append(f"| {md_escape(d.cell)} | {d.test} | {100 * d.baseline_accuracy:.1f} | {100 * d.accuracy:.1f} | "
                     f"{100 * d.delta:+.1f} | {d.p_value:.3g} | {'**DRIFT**' if d.significant else 'no'} |")
    return "\n".join(lines + [""])


@dataclass(frozen=True)
class HistoryCheck:
    """A run against its history: the baseline run's lines (None: no earlier passing run) and one Drift per cell."""

    path: Path
    baseline: list[dict] | None
    drifts: list[Drift]
    alpha: float
    min_change: float = 0.0

    @property
    def significant(self) -> bool:
        return any(d.significant for d in self.drifts)

    def to_json(self) -> dict:
        """drift.json"""
        return {"history": str(self.path), "alpha": self.alpha, "min_change": self.min_change,
                "baseline_run": self.baseline[0]["run_id"] if self.baseline else None,
                "drifts": [d.to_json() for d in self.drifts]}

    def markdown(self) -> str:
        """report.md's drift section."""
        return drift_markdown(self.baseline, self.drifts, self.path)


def check(summary, task, out: Path, path: Path, alpha: float = 0.05, min_change: float = 0.0) -> HistoryCheck:
    """Compare a run's summary with its baseline in the history file `path`, then append the run's lines. The
    reports carry the result (summary_doc.Summary.history); nothing here writes them."""
    path = resolve_path(path)
    current = lines_for_run(summary, task, out)
    base, drifts = compare(load(path), current, alpha, min_change)
    append(path, current)
    return HistoryCheck(path, base, drifts, alpha, min_change)
