"""Verdicts: one per (max_bt, mode), from its run, its twin, and the `off` reference on the same samples."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from . import confirm as confirm_mod
from .confirm import Confirmation
from .twin import TwinComparison, compare_twin, paired_on_finished
from .config import REFERENCE_MODE, ModePlan
from .results import RunResult
from .stats import mcnemar_exact, wilson_ci


class Verdict(str, enum.Enum):
    """A cell's verdict. The value is the string written to summary.json, history and reports.

    - `precedence`: when several apply to a cell, the lowest wins (the order in which `decide` checks them);
    - `severity`: the worst cell of a mode in a sweep is the one with the highest;
    - `finding`: a finding makes the exit code 1 and fails the pytest item;
    - `colour` (HTML badge) and `legend` (one line in report.md, report.html and the README table).
    """

    def __new__(cls, value: str, precedence: int, severity: int, finding: bool, colour: str, legend: str):
        obj = str.__new__(cls, value)
        obj._value_ = value
        obj.precedence, obj.severity, obj.finding, obj.colour, obj.legend = (precedence, severity, finding, colour,
                                                                             legend)
        return obj

    FAIL = ("FAIL", 0, 6, True, "#8250df", "the run or its twin crashed, timed out, or has failed or missing requests")
    STALE_GRAPH = ("STALE_GRAPH", 1, 6, True, "#cf222e",
                   "a graph run differs from its padded-eager twin (same padding, graphs off), which it must "
                   "reproduce bit for bit, and a fresh re-run reproduces the same mismatches (unless --no-confirm)")
    STALE_CONSTANT = ("STALE_CONSTANT", 2, 5, True, "#a40e26",
                      "a graph was replayed for a batch whose eager forward needs other launch constants "
                      "(max_seqlen_q, max_seqlen_k per layer type, padded sizes) than the ones baked in at capture")
    NONDETERMINISTIC = ("NONDETERMINISTIC", 3, 4, True, "#9a6700",
                        "the engine gave different outputs for identical input: a re-run or repeat of a graph run that "
                        "differs from its twin does not reproduce it (or the twin itself is not reproducible)")
    SKIPPED = ("SKIPPED", 4, 0, False, "#6e7781", "the mode cannot be tested here (reason given); never a silent pass")
    ACCURACY_DROP = ("ACCURACY_DROP", 5, 2, True, "#bc4c00",
                     "a significant paired accuracy drop vs `off` (exact McNemar, at least --min-drop)")
    PASS = ("PASS", 9, 1, False, "#1a7f37", "none of the above (`off`: the reference ran cleanly)")

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


PASS, SKIPPED, STALE_GRAPH, ACCURACY_DROP, FAIL = (Verdict.PASS, Verdict.SKIPPED, Verdict.STALE_GRAPH,
                                                   Verdict.ACCURACY_DROP, Verdict.FAIL)
STALE_CONSTANT, NONDETERMINISTIC = Verdict.STALE_CONSTANT, Verdict.NONDETERMINISTIC
FINDINGS = tuple(v for v in Verdict if v.finding)
EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


def legend() -> str:
    """One line naming every verdict, in order of precedence."""
    return "Verdicts: " + "; ".join(f"{v.value} = {v.legend}" for v in by_precedence()) + "."


def by_precedence() -> list[Verdict]:
    return sorted(Verdict, key=lambda v: v.precedence)


def worst(verdicts) -> Verdict:
    """The most severe of some verdict strings (a sweep's worst cell)."""
    return max((Verdict(v) for v in verdicts), key=lambda v: v.severity)


@dataclass(frozen=True)
class Thresholds:
    alpha: float = 0.05  # McNemar significance level
    min_drop: float = 0.02  # smallest accuracy drop vs off (absolute) that counts


@dataclass
class ModeOutcome:
    mode: str
    max_bt: int
    verdict: Verdict
    reason: str
    run_key: str
    twin_key: str | None
    n: int
    correct: int
    accuracy: float | None  # over the finished samples; None when none finished
    accuracy_ci: tuple[float, float] | None
    delta_vs_off: float | None
    p_value: float | None
    twin_mismatches: int | None
    twin_compared: int | None
    failed_requests: int
    twin_failed_requests: int | None
    inject: str | None
    error_class: str | None
    comparison: TwinComparison | None = None
    notes: list[str] = field(default_factory=list)
    engine: str = "default"
    axes: str = ""
    cell_id: str = ""
    per_sample: list[bool] = field(default_factory=list)  # correctness per sample index (primary filter)
    ran: bool = True  # False: the engine could not express this mode, nothing was generated for it
    confirmation: Confirmation | None = None  # the runs compared when the graph run differs from its twin
    stale_constants: dict | None = None  # the worker's stale-constant check (None: no graph was replayed or checked)
    finished: int | None = None  # samples that finished (status ok); accuracy counts only these

    def accuracy_text(self) -> str:
        """`acc=0.250`, or where samples are missing `acc=0.333 (of 3/20 finished)`, or `acc=n/a (0/20 finished)`:
        a missing sample is never counted as a wrong answer."""
        finished = self.n if self.finished is None else self.finished
        value = "n/a" if self.accuracy is None else f"{self.accuracy:.3f}"
        if finished == self.n:
            return f"acc={value}"
        return f"acc={value} ({'' if self.accuracy is None else 'of '}{finished}/{self.n} finished)"


def _failure(result: RunResult, who: str) -> str | None:
    # "stopped": --fail-fast ended the run after its cell's first twin mismatch; its missing samples are no failure
    if result.status in ("ok", "unsupported", "stopped"):
        return None
    detail = result.error or result.status
    return f"{who}: {result.error_class or result.status}: {detail} ({result.failed}/{len(result.samples)} " \
           "requests failed or missing)"


def _first_tokens(c) -> str:
    m = c.first[0]
    return (f"{c.role} {c.run} first differs at sample {m['index']} token {m['token']} ({m['run_token']} vs twin "
            f"{m['twin_token']})")


def _nondeterministic(c: Confirmation) -> str:
    n, differ = len(c.checks), len(c.checks) - c.matched
    shown = "; ".join(_first_tokens(x) if x.first else f"{x.role} {x.run} identical to the twin" for x in c.checks)
    if c.status == confirm_mod.TWIN_NOT_REPRODUCIBLE:
        bad = next(x for x in c.twin_checks if x.mismatches)
        return (f"the padded-eager twin is not reproducible (its re-run {bad.run} differs on {bad.mismatches}/"
                f"{bad.compared} samples): the oracle is not sound for this configuration; {differ} of {n} graph "
                f"runs differ from the twin ({shown})")
    alike = "" if c.matched else ", and not alike"
    return f"{differ} of {n} runs of the same configuration differ from the padded-eager twin{alike} ({shown})"


def _stale_constants(sc: dict) -> str:
    first = sc["first"][0]
    return (f"{sc['total']} stale launch constants in {sc.get('replays_checked', '?')} graph replays (first: "
            f"{first['name']} captured {first['captured']}, needed {first['needed']} at step {first['step']}, "
            f"{first['path']} graph key {tuple(first['key'])})")


def _paths_without_graphs(plan: ModePlan, run: RunResult) -> list[str]:
    """The graph paths the mode turned on on which the run captured no graph (the worker counts captures per path in
    resolved.graphs_captured; a run without that record, e.g. an older one, is taken at its word)."""
    captured = (run.meta.get("resolved") or {}).get("graphs_captured") if run.status != "unsupported" else None
    if not isinstance(captured, dict):
        return []
    return [path for path, on in zip(("varlen", "decode"), plan.graphs_effective) if on and not captured.get(path)]


def _no_graph_captured(paths: list[str]) -> str:
    why = (" (transformers gives models with sliding-window layers, e.g. Gemma 3, no decode fast path: their decode "
           "batches run through the varlen path)") if "decode" in paths else ""
    return (f"no CUDA graph was captured on the {' and '.join(paths)} path in this run: the engine never took the "
            f"graphed path, so its graphs were not tested{why}")


def _reset_race_signature(comparison: TwinComparison | None, confirmation: Confirmation | None, sc: dict | None,
                          run: RunResult) -> str | None:
    """A note when what differs from the twin looks like transformers' start-of-run async reset race rather than a
    stale graph: in every differing run exactly one sample differs, the same one, from its first generated token, no
    launch constant was stale, and async batching was on. The race loses the first scheduled request's first prompt
    chunk (reports/h200-repeat/ANALYSIS.md, reports/h200-sweep/SAMPLE66.md); it is not a graph's fault, although so
    far only graph runs were hit. The verdict itself is not changed: the note says how to tell."""
    if comparison is None or comparison.count != 1 or comparison.mismatches[0].position != 0:
        return None
    if (sc and sc.get("total")) or (run.meta.get("engine") or {}).get("use_async") is False:
        return None
    index = comparison.mismatches[0].index
    if confirmation is not None:
        for c in confirmation.checks:
            if c.mismatches and (c.mismatches != 1 or [(m["index"], m["token"]) for m in c.first] != [(index, 0)]):
                return None
    return (f"only sample {index} differs, from its first generated token, and no launch constant was stale: the "
            "signature of transformers' start-of-run async reset race (the first scheduled request loses its first "
            "prompt chunk), not of a stale graph; `--async off`, or `--inject MODE=sync-reset` (the candidate fix), "
            "tells them apart")


def _degenerate(result: RunResult | None) -> int | None:
    """The one token id a run generated at every position of every finished sample (two samples at least), else
    None: what greedy decoding gives from NaN or garbage logits (on the H200 a twin once gave id 0 throughout,
    reports/h200-speed/decode-skip/)."""
    if result is None:
        return None
    done = [smp.token_ids for smp in result.samples if smp.status == "ok" and smp.token_ids]
    ids = {t for tokens in done for t in tokens}
    return next(iter(ids)) if len(done) >= 2 and len(ids) == 1 else None


def decide(plan: ModePlan, run: RunResult, twin: RunResult | None, correct: list[bool], off_run: RunResult | None,
           off_correct: list[bool] | None, thresholds: Thresholds = Thresholds(),
           confirmation: Confirmation | None = None, others: dict[str, RunResult] | None = None) -> ModeOutcome:
    """`confirmation`: what the mode's other runs show (confirm.confirm); `others`: those runs (repeats, re-runs,
    twin re-runs) by key, whose failures fail the cell too."""
    n = len(run.samples)
    # accuracy of what finished: a sample lost to a crash or a timeout is not a wrong answer
    finished = sum(smp.status == "ok" for smp in run.samples)
    k = sum(1 for ok, smp in zip(correct, run.samples) if ok and smp.status == "ok")
    outcome = ModeOutcome(
        mode=plan.mode, max_bt=plan.max_bt, verdict=PASS, reason="", run_key=plan.run, twin_key=plan.twin, n=n,
        correct=k, accuracy=k / finished if finished else None, accuracy_ci=wilson_ci(k, finished),
        finished=finished, delta_vs_off=None, p_value=None,
        twin_mismatches=None, twin_compared=None, failed_requests=run.failed,
        twin_failed_requests=twin.failed if twin is not None else None, inject=plan.fault,
        error_class=run.error_class, notes=list(plan.notes), engine=plan.engine,
        axes=plan.axes.label() if plan.axes else "", cell_id=plan.cell_id, per_sample=list(correct))

    if run.status == "unsupported":
        outcome.verdict, outcome.reason = SKIPPED, run.error or "not supported by this engine"
        outcome.ran = False
        return outcome
    if twin is not None and twin.status != "unsupported":
        outcome.comparison = compare_twin(run, twin)
        outcome.twin_mismatches = outcome.comparison.count
        outcome.twin_compared = outcome.comparison.compared
    if off_run is not None and off_correct is not None and plan.mode != REFERENCE_MODE:
        paired = paired_on_finished(off_run, run, off_correct, correct)
        outcome.delta_vs_off = paired.delta if paired.n else None
        outcome.p_value = mcnemar_exact(paired.only_a, paired.only_b)

    # every verdict that applies, with its reason; the one first in precedence wins
    applies: dict[Verdict, str] = {}
    outcome.confirmation = confirmation
    sc = run.meta.get("stale_constants") if run.status != "unsupported" else None
    outcome.stale_constants = sc
    failure = _failure(run, "run") or (_failure(twin, "twin") if twin is not None else None) or next(
        (f for key, r in (others or {}).items() if (f := _failure(r, f"re-run {key}"))), None)
    if failure:
        applies[FAIL] = failure
    if confirmation is not None and confirmation.status in (confirm_mod.NOT_REPRODUCED,
                                                            confirm_mod.TWIN_NOT_REPRODUCIBLE):
        applies[NONDETERMINISTIC] = _nondeterministic(confirmation)
    elif outcome.twin_mismatches:
        first = outcome.comparison.mismatches[0]
        how = (f"; confirmed: all {len(confirmation.checks)} runs reproduce the same mismatches"
               + (" and the twin's re-run reproduces the twin" if confirmation.twin_checks else "")
               if confirmation is not None and confirmation.status == confirm_mod.CONFIRMED else "; not confirmed "
               "by a re-run")
        applies[STALE_GRAPH] = (f"{outcome.twin_mismatches}/{outcome.twin_compared} samples differ from the "
                                f"padded-eager twin (first: sample {first.index} at token {first.position}){how}")
    if sc and sc.get("total"):
        applies[STALE_CONSTANT] = _stale_constants(sc)
    if race := _reset_race_signature(outcome.comparison, confirmation, sc, run):
        outcome.notes.append(race)
    named: set[str] = set()  # a run that is its own twin (no graph on this device) is named once
    for who, key, r in (("run", plan.run, run), ("twin", plan.twin, twin),
                        *(("re-run", k, r) for k, r in (others or {}).items())):
        if key not in named and (token := _degenerate(r)) is not None:
            named.add(key)
            outcome.notes.append(f"{who} {key} generated token {token} at every position of every sample: its logits "
                                 "were NaN or garbage, a failure of that run (not a replayed graph's constants)")
    if plan.mode != REFERENCE_MODE and not any(plan.graphs_effective):
        applies[SKIPPED] = "; ".join(plan.notes) or "no graph is captured on this device"
    elif plan.mode != REFERENCE_MODE and (idle := _paths_without_graphs(plan, run)):
        if len(idle) == sum(plan.graphs_effective):  # graphs were allowed, yet the run never captured one
            applies[SKIPPED] = _no_graph_captured(idle)
        else:
            outcome.notes.append(_no_graph_captured(idle))
    if (outcome.p_value is not None and outcome.delta_vs_off is not None and outcome.p_value < thresholds.alpha
            and -outcome.delta_vs_off >= thresholds.min_drop):
        applies[ACCURACY_DROP] = (f"accuracy {outcome.delta_vs_off:+.3f} vs off (McNemar p={outcome.p_value:.3g} < "
                                  f"{thresholds.alpha}, drop >= {thresholds.min_drop})")
    if plan.mode == REFERENCE_MODE:
        applies[PASS] = "reference run"
    elif outcome.twin_compared is not None:
        applies[PASS] = f"{outcome.twin_compared} samples identical to the padded-eager twin"
    else:
        applies[PASS] = (f"no stale launch constant in {sc.get('replays_checked', 0)} graph replays (no twin: "
                         "--oracle constants)") if sc else "no twin and no stale-constant check"
    outcome.verdict = min(applies, key=lambda v: v.precedence)
    outcome.reason = applies[outcome.verdict]
    if outcome.verdict == FAIL:
        outcome.error_class = run.error_class or (twin.error_class if twin is not None else None)
    return outcome


def exit_code(outcomes: list[ModeOutcome]) -> int:
    return EXIT_FINDINGS if any(Verdict(o.verdict).finding for o in outcomes) else EXIT_OK
