"""Twin comparison: a graph run against its padded-eager twin, token stream by token stream."""

from __future__ import annotations

from dataclasses import dataclass, field

from .results import RunResult
from .stats import Paired, paired_counts


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token; len of the shorter stream if one is a prefix of the other; None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@dataclass
class Mismatch:
    index: int
    position: int
    run_tokens: list[int]
    twin_tokens: list[int]
    run_text: str
    twin_text: str


@dataclass
class TwinComparison:
    compared: int  # samples finished ok in both runs
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.mismatches)


def compare_twin(run: RunResult, twin: RunResult) -> TwinComparison:
    """Compare every sample that finished in both runs; failed or missing samples are counted elsewhere."""
    twin_by_index = {s.index: s for s in twin.samples}
    out = TwinComparison(compared=0)
    for s in run.samples:
        t = twin_by_index.get(s.index)
        if t is None or s.status != "ok" or t.status != "ok":
            continue
        out.compared += 1
        pos = first_difference(s.token_ids, t.token_ids)
        if pos is not None:
            out.mismatches.append(Mismatch(s.index, pos, s.token_ids, t.token_ids, s.text, t.text))
    return out


def paired_on_finished(a: RunResult, b: RunResult, correct_a: list[bool], correct_b: list[bool]) -> Paired:
    """Paired correctness of two runs over the same prompts, on the samples both finished (a failed or missing
    request is not a wrong answer to pair)."""
    ok = [i for i, (x, y) in enumerate(zip(a.samples, b.samples)) if x.status == y.status == "ok"]
    return paired_counts([correct_a[i] for i in ok], [correct_b[i] for i in ok])
