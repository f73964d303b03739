"""Confirmation: is a graph run that differs from its twin a stale graph, or an engine that is not deterministic?

A stale graph is deterministic: the same batches replay the same wrong constants, so a fresh run of the same
configuration reproduces the same mismatches. Given every run of a mode's configuration (the first, its --repeat
repeats, confirmation re-runs) and its twin (and the twin's re-runs), this module decides which further runs are
needed (`reruns_needed`, applied until none is) and what the runs show (`confirm`):

- every graph run differs from the twin, all with the same mismatches (at least two runs): `confirmed`;
- some graph run equals the twin, or the graph runs differ among themselves: `not_reproduced`;
- one run only (`--no-confirm`, or a re-run that is not there, as in `merge` of a plan without it): `unconfirmed`;
- a twin re-run that differs from the twin: `twin_not_reproducible` (the oracle is not sound for this
  configuration), whatever the graph runs show.

The twin is the oracle, and it is one run too: whenever no graph run equals it, it is re-run (in the same round as
the graph run's re-run), so a difference is called a stale graph only when the twin reproduced itself. On the H200
a twin once generated token 0 throughout (200/200 samples) while two verdicts shared the GPU, and both graph runs,
agreeing with each other and with the twin's re-run, were called a confirmed STALE_GRAPH
(`reports/h200-speed/decode-skip/`). Modes that share a twin (`on` and `varlen`) share its re-run: same
configuration, same key, one job.

Pure: no torch, no engine; the pipeline runs the jobs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .config import EngineConfig, ModePlan, Plan
from .results import RunResult
from .twin import TwinComparison, compare_twin

CONFIRMED, NOT_REPRODUCED, TWIN_NOT_REPRODUCIBLE, UNCONFIRMED = (
    "confirmed", "not_reproduced", "twin_not_reproducible", "unconfirmed")
SHOWN = 3  # first mismatches listed per run


@dataclass
class RunCheck:
    """One run compared with the twin (or a twin re-run compared with the twin)."""

    run: str
    role: str  # "run", "repeat", "re-run", "twin re-run"
    attempt: int
    compared: int
    mismatches: int
    first: list[dict] = field(default_factory=list)  # {"index", "token", "run_token", "twin_token"}
    signature: tuple = ()  # every mismatch's (sample, position, token): equal signatures = same mismatches

    def to_json(self) -> dict:
        return {"run": self.run, "role": self.role, "attempt": self.attempt, "compared": self.compared,
                "mismatches": self.mismatches, "first_mismatches": self.first}


def _check(key: str, role: str, attempt: int, comparison: TwinComparison) -> RunCheck:
    def at(tokens, pos):
        return tokens[pos] if pos < len(tokens) else None  # None: the stream ended there

    first = [{"index": m.index, "token": m.position, "run_token": at(m.run_tokens, m.position),
              "twin_token": at(m.twin_tokens, m.position)} for m in comparison.mismatches[:SHOWN]]
    signature = tuple((m.index, m.position, at(m.run_tokens, m.position)) for m in comparison.mismatches)
    return RunCheck(key, role, attempt, comparison.compared, comparison.count, first, signature)


@dataclass
class Confirmation:
    status: str
    checks: list[RunCheck]  # every graph run of the mode against the twin, the first run first
    twin_checks: list[RunCheck] = field(default_factory=list)  # twin re-runs against the twin

    @property
    def matched(self) -> int:
        return sum(not c.mismatches for c in self.checks)

    def to_json(self) -> dict:
        return {"status": self.status, "runs_compared": len(self.checks), "runs_matching_twin": self.matched,
                "runs": [c.to_json() for c in self.checks], "twin_reruns": [c.to_json() for c in self.twin_checks]}

    def describe(self) -> str:
        """One line for the reports: which runs were compared and which reproduced."""
        n = len(self.checks)
        if self.status == UNCONFIRMED:
            return "not confirmed: one run only (--no-confirm, or no re-run available)"
        parts = [f"{n - self.matched} of {n} runs of this configuration differ from the twin"]
        for c in self.checks:
            if c.first:
                m = c.first[0]
                parts.append(f"{c.role} {c.run} (attempt {c.attempt}): {c.mismatches}/{c.compared} differ, first "
                             f"sample {m['index']} at token {m['token']} ({m['run_token']} vs twin {m['twin_token']})")
            else:
                parts.append(f"{c.role} {c.run} (attempt {c.attempt}): identical to the twin on {c.compared}")
        for c in self.twin_checks:
            parts.append(f"twin re-run {c.run}: " + ("identical to the twin" if not c.mismatches else
                                                      f"{c.mismatches}/{c.compared} differ from the twin"))
        verdict = {CONFIRMED: "confirmed: every run reproduces the same mismatches"
                              + (" and the twin reproduces itself" if self.twin_checks else ""),
                   NOT_REPRODUCED: "not reproduced: the engine gave different outputs for identical input",
                   TWIN_NOT_REPRODUCIBLE: "the padded-eager twin is not reproducible: the oracle is not sound here"}
        return f"{verdict[self.status]}; " + "; ".join(parts)


def _role(mp: ModePlan, key: str) -> str:
    return "run" if key == mp.run else ("repeat" if key in mp.repeats else "re-run")


def _usable(r: RunResult | None) -> bool:
    return r is not None and r.status == "ok"


def confirm(mp: ModePlan, plan: Plan, results: dict[str, RunResult]) -> Confirmation | None:
    """What the runs of a graph mode show against its twin; None when there is nothing to confirm (no twin, the run
    is its own twin, a run or the twin did not finish, or no run differs)."""
    if mp.twin is None or mp.run == mp.twin or not _usable(results.get(mp.twin)):
        return None
    twin = results[mp.twin]
    keys = [k for k in mp.graph_runs if _usable(results.get(k))]
    if mp.run not in keys:
        return None
    checks = [_check(k, _role(mp, k), plan.runs[k].attempt, compare_twin(results[k], twin)) for k in keys]
    if not any(c.mismatches for c in checks):
        return None
    twin_checks = [_check(k, "twin re-run", plan.runs[k].attempt, compare_twin(results[k], twin))
                   for k in mp.twin_reruns if _usable(results.get(k))]
    if any(c.mismatches for c in twin_checks):
        status = TWIN_NOT_REPRODUCIBLE
    elif len(checks) == 1:
        status = UNCONFIRMED
    elif all(c.mismatches for c in checks) and len({c.signature for c in checks}) == 1:
        status = CONFIRMED
    else:
        status = NOT_REPRODUCED
    return Confirmation(status, checks, twin_checks)


def reruns_needed(plan: Plan, results: dict[str, RunResult]) -> dict[str, EngineConfig]:
    """The next runs that confirmation needs, added to `plan` (its runs and each mode's reruns / twin_reruns):
    a re-run of a graph run that is the only run of its configuration and differs from its twin; a re-run of the
    twin whenever no graph run equals it (beside that re-run, so both run in one round). Call again with the new
    results until it is empty."""
    needed: dict[str, EngineConfig] = {}
    for mp in plan.modes:
        c = confirm(mp, plan, results)
        if c is None:
            continue
        added = False
        if c.status == UNCONFIRMED and not mp.reruns:
            cfg = dataclasses.replace(plan.runs[mp.run], attempt=1 + len(mp.repeats))
            mp.reruns.append(plan.add(cfg))
            added = True
        if not c.matched and not mp.twin_reruns:
            mp.twin_reruns.append(plan.add(dataclasses.replace(plan.runs[mp.twin], attempt=1)))
            added = True
        if not added:
            continue
        for key in (mp.reruns + mp.twin_reruns):
            if key not in results:
                needed[key] = plan.runs[key]
    return needed
