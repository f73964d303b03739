"""Score: job results -> each sample scored by the task (lm-eval's filters and metric) -> one verdict per cell, each
graph run against its padded-eager twin and against its group's `off` reference (verdict.decide)."""

from __future__ import annotations

from dataclasses import dataclass

from .config import REFERENCE_MODE
from .confirm import confirm
from .plan import Prepared
from .results import RunResult
from .verdict import ModeOutcome, Thresholds, decide


@dataclass(frozen=True)
class Scores:
    scored: dict[str, list]  # run key -> the task's score of each sample (answers per filter, correct per filter)
    correct: dict[str, list[bool]]  # run key -> correct under the primary filter, and the request finished
    outcomes: list[ModeOutcome]  # one per cell, in plan order


def score(p: Prepared, results: dict[str, RunResult]) -> Scores:
    task, plan, unsupported = p.task, p.plan, p.unsupported
    scored = {key: task.score([smp.text for smp in r.samples]) for key, r in results.items()}
    correct = {key: [sc.correct[task.primary_filter] and smp.status == "ok"
                     for sc, smp in zip(rows, results[key].samples)] for key, rows in scored.items()}
    thresholds = Thresholds(p.settings.verdict.alpha, p.settings.verdict.min_drop)
    outcomes = []
    for mp in plan.modes:
        if mp.cell_id in unsupported:
            skipped = RunResult(key=mp.run, status="unsupported", samples=[], error=unsupported[mp.cell_id])
            outcomes.append(decide(mp, skipped, None, [], None, None))
            continue
        off = next((o for o in plan.modes if o.mode == REFERENCE_MODE and o.group == mp.group), None)
        others = {k: results[k] for k in (*mp.graph_runs[1:], *mp.twin_reruns) if k in results}
        outcomes.append(decide(mp, results[mp.run], results[mp.twin] if mp.twin else None, correct[mp.run],
                               results[off.run] if off else None, correct[off.run] if off else None, thresholds,
                               confirm(mp, plan, results), others))
    return Scores(scored, correct, outcomes)
