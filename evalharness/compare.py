"""Paired comparison of two sample logs: lm-eval `--log_samples` files or the harness's samples.jsonl.

Both files are reduced to {sample key: correct} and paired on their common keys: lm-eval's `doc_id` (one filter,
checked against `doc_hash` so that different documents are never paired), or the harness's `index` within one mode
(and max_bt, padded-eager twin excluded). The comparison is the exact McNemar test on the discordant pairs, a paired
bootstrap CI of accuracy(B) - accuracy(A), the samples whose correctness flipped, and beside them the samples whose
output changed at all (a changed output that is still right or still wrong flips nothing, yet the engine differs):
their count and the first differing token (token ids where both logs have them, else the first differing character).
Logs scored by different filters are never paired silently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import UsageError
from .data import json_objects
from .stats import mcnemar_exact, paired_bootstrap_ci, paired_counts
from .twin import first_difference


@dataclass
class Outcome:
    correct: bool
    answer: str | None = None
    doc_hash: str | None = None
    text: str | None = None  # the raw output (lm-eval's resps, our text)
    token_ids: list[int] | None = None  # our samples.jsonl only


@dataclass
class SampleLog:
    path: str
    kind: str  # "lm-eval" or "evalharness"
    selection: str  # which filter / mode the outcomes are for
    outcomes: dict[int, Outcome]
    filter: str | None = None  # the lm-eval filter that decided `correct`, where the log says

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
class ChangedOutput:
    key: int
    unit: str  # "token" (both logs have token ids) or "char"
    position: int  # index of the first differing token / character
    a_piece: str  # what A has there (a token id or a few characters)
    b_piece: str
    a_correct: bool
    b_correct: bool


def changed_output(key: int, a: Outcome, b: Outcome) -> ChangedOutput | None:
    if a.token_ids is not None and b.token_ids is not None:
        pos = first_difference(a.token_ids, b.token_ids)
        if pos is None:
            return None
        piece = lambda ids: str(ids[pos]) if pos < len(ids) else "(end)"  # noqa: E731
        return ChangedOutput(key, "token", pos, piece(a.token_ids), piece(b.token_ids), a.correct, b.correct)
    if a.text is None or b.text is None:
        return None
    pos = first_difference(a.text, b.text)
    if pos is None:
        return None
    piece = lambda text: text[pos:pos + 12] or "(end)"  # noqa: E731
    return ChangedOutput(key, "char", pos, piece(a.text), piece(b.text), a.correct, b.correct)


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
    changed_outputs: list[ChangedOutput] = field(default_factory=list)
    outputs_compared: int = 0  # paired samples whose outputs both logs hold

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
        out[key] = Outcome(value >= 1.0, _answer(r.get("filtered_resps")), r.get("doc_hash"), _answer(r.get("resps")))
    return SampleLog(str(path), "lm-eval", f"filter {chosen}, {metric}", out, filter=chosen)


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
        tokens = r.get("token_ids")
        out[key] = Outcome(bool(r["correct"]), r.get("answer"), text=r.get("text"),
                           token_ids=list(tokens) if isinstance(tokens, list) else None)
    label = f"mode {mode}" + (f", max_bt {bts[0] if max_bt is None else max_bt}" if bts else "")
    return SampleLog(str(path), "evalharness", label, out, filter=_summary_filter(path))


def _summary_filter(samples: Path) -> str | None:
    """The filter our samples.jsonl was scored by: summary.json next to it says (None when it is not there)."""
    import json

    try:
        value = json.loads((samples.parent / "summary.json").read_text()).get("filter")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def load(path: str | Path, filter_name: str | None = None, metric: str = "exact_match", mode: str = "off",
         max_bt: int | None = None) -> SampleLog:
    path = Path(path)
    rows = _read_rows(path)
    if _kind(rows, path) == "lm-eval":
        return _lmeval(rows, path, filter_name, metric)
    return _evalharness(rows, path, mode, max_bt)


def compare(a: SampleLog, b: SampleLog, confidence: float = 0.95, seed: int = 0) -> Comparison:
    if a.filter and b.filter and a.filter != b.filter:
        raise UsageError(f"compare: {a.path} is scored by filter {a.filter!r} and {b.path} by {b.filter!r}: "
                         "correctness under different filters is not comparable (pass --filter NAME present in both)")
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
    changed = [c for c in (changed_output(k, a.outcomes[k], b.outcomes[k]) for k in keys) if c is not None]
    with_outputs = sum(1 for k in keys if (a.outcomes[k].token_ids is not None and b.outcomes[k].token_ids is not None)
                       or (a.outcomes[k].text is not None and b.outcomes[k].text is not None))
    return Comparison(a=a.path, b=b.path, a_selection=a.selection, b_selection=b.selection, n=pc.n,
                      acc_a=sum(ca) / pc.n, acc_b=sum(cb) / pc.n, both=pc.both, only_a=pc.only_a, only_b=pc.only_b,
                      neither=pc.neither, delta=pc.delta,
                      delta_ci=paired_bootstrap_ci(ca, cb, confidence=confidence, seed=seed),
                      p_value=mcnemar_exact(pc.only_a, pc.only_b), unpaired_a=len(a.outcomes) - pc.n,
                      unpaired_b=len(b.outcomes) - pc.n, flips=flips, changed_outputs=changed,
                      outputs_compared=with_outputs)


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
    lines.append(f"changed outputs: {len(c.changed_outputs)} of {c.outputs_compared}"
                 + (" (outputs differ even where correctness did not flip)" if len(c.changed_outputs) > len(c.flips)
                    else ""))
    for ch in c.changed_outputs[:max_flips]:
        same = "still right" if ch.a_correct and ch.b_correct else (
            "still wrong" if not ch.a_correct and not ch.b_correct else "flipped")
        lines.append(f"  {ch.key}: first differing {ch.unit} {ch.position}: A={ch.a_piece!r} B={ch.b_piece!r} "
                     f"({same})")
    if len(c.changed_outputs) > max_flips:
        lines.append(f"  ... {len(c.changed_outputs) - max_flips} more (--json lists all)")
    return "\n".join(lines)
