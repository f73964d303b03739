"""Paired comparison of two sample logs: lm-eval `--log_samples` files or the harness's samples.jsonl.

Both files are reduced to {sample key: correct} and paired on their common keys: lm-eval's `doc_id` (one filter,
checked against `doc_hash` so that different documents are never paired), or the harness's `index` within one mode
(and max_bt, padded-eager twin excluded). The comparison is the exact McNemar test on the discordant pairs, a paired
bootstrap CI of accuracy(B) - accuracy(A), and the samples whose correctness flipped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import UsageError
from .data import json_objects
from .stats import mcnemar_exact, paired_bootstrap_ci, paired_counts


@dataclass
class Outcome:
    correct: bool
    answer: str | None = None
    doc_hash: str | None = None


@dataclass
class SampleLog:
    path: str
    kind: str  # "lm-eval" or "evalharness"
    selection: str  # which filter / mode the outcomes are for
    outcomes: dict[int, Outcome]

    @property
    def accuracy(self) -> float:
        return sum(o.correct for o in self.outcomes.values()) / len(self.outcomes) if self.outcomes else float("nan")


@dataclass
class Flip:
    key: int
    a_correct: bool
    b_correct: bool
    a_answer: str | None
    b_answer: str | None


@dataclass
class Comparison:
    a: str
    b: str
    a_selection: str
    b_selection: str
    n: int
    acc_a: float
    acc_b: float
    both: int
    only_a: int
    only_b: int
    neither: int
    delta: float
    delta_ci: tuple[float, float] | None
    p_value: float
    unpaired_a: int
    unpaired_b: int
    flips: list[Flip] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise UsageError(f"compare: {path}: no such file")
    rows = [row for _, row in json_objects(path, "compare:")]
    if not rows:
        raise UsageError(f"compare: {path}: no rows")
    return rows


def _kind(rows: list[dict], path: Path) -> str:
    first = rows[0]
    if "doc_id" in first and "filtered_resps" in first:
        return "lm-eval"
    if {"mode", "index", "correct"} <= first.keys():
        return "evalharness"
    raise UsageError(f"compare: {path}: neither an lm-eval --log_samples file (doc_id, filtered_resps) nor an "
                     "evalharness samples.jsonl (mode, index, correct)")


def _answer(resps) -> str | None:
    while isinstance(resps, list) and resps:
        resps = resps[0]
    return None if isinstance(resps, list) else str(resps)


def _lmeval(rows: list[dict], path: Path, filter_name: str | None, metric: str) -> SampleLog:
    filters = list(dict.fromkeys(str(r.get("filter", "none")) for r in rows))
    chosen = filter_name or ("strict-match" if "strict-match" in filters else filters[0])
    if chosen not in filters:
        raise UsageError(f"compare: {path}: filter {chosen!r} not among {', '.join(filters)}")
    out: dict[int, Outcome] = {}
    for r in rows:
        if str(r.get("filter", "none")) != chosen:
            continue
        if metric not in r:
            raise UsageError(f"compare: {path}: doc_id {r.get('doc_id')} has no metric {metric!r} (has "
                             f"{', '.join(r.get('metrics') or [])})")
        try:
            key, value = int(r["doc_id"]), float(r[metric])
        except (TypeError, ValueError):
            raise UsageError(f"compare: {path}: doc_id {r.get('doc_id')!r} / {metric} {r.get(metric)!r} not numeric")
        if key in out:
            raise UsageError(f"compare: {path}: doc_id {key} appears twice for filter {chosen!r}")
        out[key] = Outcome(value >= 1.0, _answer(r.get("filtered_resps")), r.get("doc_hash"))
    return SampleLog(str(path), "lm-eval", f"filter {chosen}, {metric}", out)


def _evalharness(rows: list[dict], path: Path, mode: str, max_bt: int | None) -> SampleLog:
    rows = [r for r in rows if not r.get("twin")]
    modes = list(dict.fromkeys(str(r.get("mode")) for r in rows))
    if mode not in modes:
        raise UsageError(f"compare: {path}: mode {mode!r} not among {', '.join(modes)}")
    rows = [r for r in rows if r.get("mode") == mode]
    bts = sorted({r.get("max_bt") for r in rows if r.get("max_bt") is not None})
    if max_bt is None and len(bts) > 1:
        raise UsageError(f"compare: {path}: several max_bt values ({', '.join(map(str, bts))}); pass --max-bt")
    if max_bt is not None:
        if max_bt not in bts:
            raise UsageError(f"compare: {path}: max_bt {max_bt} not among {', '.join(map(str, bts))}")
        rows = [r for r in rows if r.get("max_bt") == max_bt]
    out: dict[int, Outcome] = {}
    for r in rows:
        try:
            key = int(r["index"])
        except (TypeError, ValueError):
            raise UsageError(f"compare: {path}: index {r.get('index')!r} is not an integer")
        if key in out:
            raise UsageError(f"compare: {path}: index {key} appears twice for mode {mode!r}")
        out[key] = Outcome(bool(r["correct"]), r.get("answer"))
    label = f"mode {mode}" + (f", max_bt {bts[0] if max_bt is None else max_bt}" if bts else "")
    return SampleLog(str(path), "evalharness", label, out)


def load(path: str | Path, filter_name: str | None = None, metric: str = "exact_match", mode: str = "off",
         max_bt: int | None = None) -> SampleLog:
    path = Path(path)
    rows = _read_rows(path)
    if _kind(rows, path) == "lm-eval":
        return _lmeval(rows, path, filter_name, metric)
    return _evalharness(rows, path, mode, max_bt)


def compare(a: SampleLog, b: SampleLog, confidence: float = 0.95, seed: int = 0) -> Comparison:
    keys = sorted(a.outcomes.keys() & b.outcomes.keys())
    if not keys:
        raise UsageError(f"compare: {a.path} and {b.path} share no samples")
    for k in keys:
        ha, hb = a.outcomes[k].doc_hash, b.outcomes[k].doc_hash
        if ha and hb and ha != hb:
            raise UsageError(f"compare: sample {k} is a different document in {a.path} and {b.path} (doc_hash "
                             "differs): the logs are not of the same task and data")
    ca = [a.outcomes[k].correct for k in keys]
    cb = [b.outcomes[k].correct for k in keys]
    pc = paired_counts(ca, cb)
    flips = [Flip(k, a.outcomes[k].correct, b.outcomes[k].correct, a.outcomes[k].answer, b.outcomes[k].answer)
             for k in keys if a.outcomes[k].correct != b.outcomes[k].correct]
    return Comparison(a=a.path, b=b.path, a_selection=a.selection, b_selection=b.selection, n=pc.n,
                      acc_a=sum(ca) / pc.n, acc_b=sum(cb) / pc.n, both=pc.both, only_a=pc.only_a, only_b=pc.only_b,
                      neither=pc.neither, delta=pc.delta,
                      delta_ci=paired_bootstrap_ci(ca, cb, confidence=confidence, seed=seed),
                      p_value=mcnemar_exact(pc.only_a, pc.only_b), unpaired_a=len(a.outcomes) - pc.n,
                      unpaired_b=len(b.outcomes) - pc.n, flips=flips)


def render(c: Comparison, max_flips: int = 50) -> str:
    ci = f"[{c.delta_ci[0]:+.3f}, {c.delta_ci[1]:+.3f}]" if c.delta_ci else "n/a (fewer than 2 pairs)"
    lines = [
        f"A: {c.a} ({c.a_selection})",
        f"B: {c.b} ({c.b_selection})",
        f"paired samples: {c.n}" + (f" (unpaired: {c.unpaired_a} only in A, {c.unpaired_b} only in B)"
                                    if c.unpaired_a or c.unpaired_b else ""),
        f"accuracy A {c.acc_a:.4f}  B {c.acc_b:.4f}  B-A {c.delta:+.4f}  95% paired bootstrap CI {ci}",
        f"both right {c.both}, A only {c.only_a}, B only {c.only_b}, neither {c.neither}",
        f"McNemar exact p = {c.p_value:.4g} ({c.only_a + c.only_b} discordant)",
        f"flipped: {len(c.flips)}",
    ]
    for f in c.flips[:max_flips]:
        arrow = "right -> wrong" if f.a_correct else "wrong -> right"
        lines.append(f"  {f.key}: {arrow}  A={f.a_answer!r}  B={f.b_answer!r}")
    if len(c.flips) > max_flips:
        lines.append(f"  ... {len(c.flips) - max_flips} more (--json lists all)")
    return "\n".join(lines)
