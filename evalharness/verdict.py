"""Verdicts: one per (max_bt, mode), from its run, its twin, and the `off` reference on the same samples."""

from __future__ import annotations

from dataclasses import dataclass, field

from .twin import TwinComparison, compare_twin, paired_on_finished
from .config import REFERENCE_MODE, ModePlan
from .results import RunResult
from .stats import mcnemar_exact, wilson_ci

PASS, SKIPPED, STALE_GRAPH, ACCURACY_DROP, FAIL = "PASS", "SKIPPED", "STALE_GRAPH", "ACCURACY_DROP", "FAIL"
FINDINGS = (STALE_GRAPH, ACCURACY_DROP, FAIL)
EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class Thresholds:
    alpha: float = 0.05  # McNemar significance level
    min_drop: float = 0.02  # smallest accuracy drop vs off (absolute) that counts


@dataclass
class ModeOutcome:
    mode: str
    max_bt: int
    verdict: str
    reason: str
    run_key: str
    twin_key: str | None
    n: int
    correct: int
    accuracy: float
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


def _failure(result: RunResult, who: str) -> str | None:
    if result.status in ("ok", "unsupported"):
        return None
    detail = result.error or result.status
    return f"{who}: {result.error_class or result.status}: {detail} ({result.failed}/{len(result.samples)} " \
           "requests failed or missing)"


def decide(plan: ModePlan, run: RunResult, twin: RunResult | None, correct: list[bool], off_run: RunResult | None,
           off_correct: list[bool] | None, thresholds: Thresholds = Thresholds()) -> ModeOutcome:
    n = len(run.samples)
    k = sum(correct)
    outcome = ModeOutcome(
        mode=plan.mode, max_bt=plan.max_bt, verdict=PASS, reason="", run_key=plan.run, twin_key=plan.twin, n=n,
        correct=k, accuracy=k / n if n else 0.0, accuracy_ci=wilson_ci(k, n), delta_vs_off=None, p_value=None,
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

    failure = _failure(run, "run") or (_failure(twin, "twin") if twin is not None else None)
    if failure:
        outcome.verdict, outcome.reason = FAIL, failure
        outcome.error_class = run.error_class or (twin.error_class if twin is not None else None)
    elif outcome.twin_mismatches:
        first = outcome.comparison.mismatches[0]
        outcome.verdict = STALE_GRAPH
        outcome.reason = (f"{outcome.twin_mismatches}/{outcome.twin_compared} samples differ from the padded-eager "
                          f"twin (first: sample {first.index} at token {first.position})")
    elif plan.mode != REFERENCE_MODE and not any(plan.graphs_effective):
        outcome.verdict = SKIPPED
        outcome.reason = "; ".join(plan.notes) or "no graph is captured on this device"
    elif (outcome.p_value is not None and outcome.delta_vs_off is not None and outcome.p_value < thresholds.alpha
          and -outcome.delta_vs_off >= thresholds.min_drop):
        outcome.verdict = ACCURACY_DROP
        outcome.reason = (f"accuracy {outcome.delta_vs_off:+.3f} vs off (McNemar p={outcome.p_value:.3g} < "
                          f"{thresholds.alpha}, drop >= {thresholds.min_drop})")
    else:
        outcome.reason = "reference run" if plan.mode == REFERENCE_MODE else (
            f"{outcome.twin_compared} samples identical to the padded-eager twin")
    return outcome


def exit_code(outcomes: list[ModeOutcome]) -> int:
    return EXIT_FINDINGS if any(o.verdict in FINDINGS for o in outcomes) else EXIT_OK
