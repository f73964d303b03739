"""Summarise: the scored cells of a run as one typed `Summary` (summary_doc.py), built once: the run-level facts, one
`Cell` per outcome, the outcomes, the samples.jsonl rows and, with --history, the drift against the history's
baseline. The writers (report.md, report.html, the pytest plugin's JUnit properties, the history file) only read it.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from .config import Plan
from .execute import CACHED_STATUSES
from .lmeval_task import TaskSpec
from .plan import Prepared
from .results import RunResult
from .score import Scores
from .settings import Settings
from .summary_doc import Cell, Summary
from .summary_header import AbRow, EngineInfo, Header, PoolRecord, RunRow, Thresholds, Versions
from .verdict import ModeOutcome, exit_code


def _run_figures(r: RunResult) -> dict:
    gen_s = r.meta.get("generate_s")
    tokens = r.generated_tokens
    done = sum(smp.status == "ok" for smp in r.samples)
    return {"tokens_per_s": tokens / gen_s if gen_s else None, "samples_per_s": done / gen_s if gen_s else None,
            "wall_s": gen_s, "peak_mem_gb": r.meta.get("peak_mem_gb"), "generated_tokens": tokens}


def _repeats(o: ModeOutcome, plan: Plan) -> dict | None:
    """--repeat N: how many of the mode's N runs (re-runs not counted) equal the twin."""
    mp = next((m for m in plan.modes if m.cell_id == o.cell_id), None)
    if mp is None or not mp.repeats:
        return None
    checks = [c for c in (o.confirmation.checks if o.confirmation else []) if c.role in ("run", "repeat")]
    runs = 1 + len(mp.repeats)
    return {"runs": runs, "matched": runs - sum(bool(c.mismatches) for c in checks)}


def _cell(o: ModeOutcome, plan: Plan, results: dict[str, RunResult], probes: dict | None = None,
          folders: dict[str, Path] | None = None) -> Cell:
    run = results[o.run_key] if o.ran else RunResult(key=o.run_key, status="unsupported", samples=[])
    folders = folders or {}
    name = lambda key: folders[key].name if key in folders else key  # noqa: E731 - the run's folder on disk
    # the version the run reported; a run killed before it wrote its meta falls back to its engine's probe
    version = run.meta.get("versions", {}).get("transformers") or (probes or {}).get(o.engine, {}).get("transformers")
    served = f"served by run {name(o.run_key)}" if o.ran else "not run: this engine cannot express the mode"
    if o.twin_key and o.ran:
        served += f", twin run {name(o.twin_key)}" if o.twin_key != o.run_key else \
            " (its own twin: same configuration)"
    shared = [m for m in plan.served_by(o.run_key) if m != o.mode]
    if shared and o.ran:
        served += f"; run shared with {', '.join(shared)}"
    # where a failed run's log is: the run's (or else the twin's) folder on disk
    failed = next((k for k in (o.run_key, o.twin_key) if k and k in results and results[k].status not in
                   CACHED_STATUSES), None)
    constants = o.stale_constants
    figures = _run_figures(run)
    return Cell(
        id=o.cell_id, engine=o.engine, axes=o.axes, max_bt=o.max_bt, mode=o.mode, verdict=o.verdict,
        reason=o.reason, accuracy=o.accuracy, finished=o.finished,
        accuracy_ci=list(o.accuracy_ci) if o.accuracy_ci else None, n=o.n, correct=o.correct,
        twin_mismatches=o.twin_mismatches, twin_compared=o.twin_compared, failed_requests=o.failed_requests,
        twin_failed_requests=o.twin_failed_requests, p_value=o.p_value, delta_vs_off=o.delta_vs_off,
        inject=o.inject, error_class=o.error_class, run=o.run_key, twin=o.twin_key, served_by=served,
        run_id=name(o.run_key) if o.ran else None, twin_id=name(o.twin_key) if o.twin_key and o.ran else None,
        notes=o.notes, transformers=version, resolved_engine=run.meta.get("resolved", {}),
        first_mismatches=[{"index": m.index, "token": m.position} for m in
                          (o.comparison.mismatches[:5] if o.comparison else [])],
        log_tail=run.log_tail[-5:], attribution=run.meta.get("audit"),
        confirmation=o.confirmation.to_json() if o.confirmation else None, repeats=_repeats(o, plan),
        stale_constants=constants.get("first", []) if constants else None,
        stale_constants_total=constants.get("total") if constants else None,
        constant_check={k: v for k, v in constants.items() if k != "first"} if constants else None,
        tokens_per_s=figures["tokens_per_s"], samples_per_s=figures["samples_per_s"], wall_s=figures["wall_s"],
        peak_mem_gb=figures["peak_mem_gb"],
        worker_log=str(folders[failed] / "worker.log") if failed in folders else None)


def ab_rows(outcomes: list[ModeOutcome], results: dict[str, RunResult]) -> list[AbRow]:
    """Engine A/B: for every cell of the first engine, the same cell under each other engine, paired on samples."""
    from .twin import paired_on_finished
    from .stats import mcnemar_exact

    engines = list(dict.fromkeys(o.engine for o in outcomes))
    if len(engines) < 2:
        return []
    by_key = {(o.engine, o.max_bt, o.axes, o.mode): o for o in outcomes}
    rows = []
    for a in (o for o in outcomes if o.engine == engines[0]):
        for other in engines[1:]:
            b = by_key.get((other, a.max_bt, a.axes, a.mode))
            if b is None:
                continue
            if a.run_key not in results or b.run_key not in results or not a.n or not b.n:
                continue  # a cell an engine cannot express has no samples to pair
            ra, rb = results[a.run_key], results[b.run_key]
            fa, fb = _run_figures(ra), _run_figures(rb)
            paired = paired_on_finished(ra, rb, a.per_sample, b.per_sample)

            def change(x, y):
                return None if not x or y is None else 100.0 * (y - x) / x

            rows.append(AbRow(max_bt=a.max_bt, axes=a.axes, mode=a.mode, a=a.engine, b=b.engine,
                              accuracy_a=a.accuracy, accuracy_b=b.accuracy, delta=paired.delta if paired.n else None,
                              p_value=mcnemar_exact(paired.only_a, paired.only_b),
                              flipped_down=paired.only_a, flipped_up=paired.only_b,
                              samples_per_s_a=fa["samples_per_s"], samples_per_s_b=fb["samples_per_s"],
                              samples_per_s_change_pct=change(fa["samples_per_s"], fb["samples_per_s"]),
                              tokens_per_s_a=fa["tokens_per_s"], tokens_per_s_b=fb["tokens_per_s"],
                              tokens_per_s_change_pct=change(fa["tokens_per_s"], fb["tokens_per_s"]),
                              peak_mem_gb_a=fa["peak_mem_gb"], peak_mem_gb_b=fb["peak_mem_gb"],
                              verdict_a=a.verdict, verdict_b=b.verdict))
    return rows


def _run_row(key: str, cfg, r: RunResult, plan: Plan, folder: Path | None) -> RunRow:
    return RunRow(id=folder.name if folder is not None else key, folder=None if folder is None else str(folder),
                  config=cfg.describe(),
                  engine=dataclasses.asdict(cfg), served=tuple(plan.served_by(key)), status=r.status,
                  error_class=r.error_class, error=r.error, resolved=r.meta.get("resolved", {}),
                  notes=tuple(r.meta.get("notes", [])), **_run_figures(r),
                  # the worker's side: its whole time on this job, the model load it paid (0: reused), which one
                  job_wall_s=r.meta.get("wall_s"), load_s=r.meta.get("load_s"), generate_s=r.meta.get("generate_s"),
                  worker_pid=(r.meta.get("worker") or {}).get("pid"), attempts=r.meta.get("attempts"),
                  timings=r.meta.get("timings") or {})


def build_summary(s: Settings, task: TaskSpec, data_label: str, model: dict, plan: Plan,
                  results: dict[str, RunResult], outcomes: list[ModeOutcome], probes: dict | None = None,
                  folders: dict[str, Path] | None = None, pool: dict | None = None) -> tuple[Header, list[Cell]]:
    """(summary.json's run-level keys, the cells). `pool`: the worker pool's account (PoolReport.to_json)."""
    cells = [_cell(o, plan, results, probes, folders) for o in outcomes]
    versions = next((r.meta["versions"] for r in results.values() if r.meta.get("versions")), {})
    folders = folders or {}
    # only the runs with a result: the others are needed only by cells an engine cannot express
    runs = {key: _run_row(key, cfg, results[key], plan, folders.get(key)) for key, cfg in plan.runs.items()
            if key in results}
    # each engine's path and what its probe read (versions, tuple graphs), less the raw config field list
    engines = {name: EngineInfo.from_json({"path": path, **{k: v for k, v in (probes or {}).get(name, {}).items()
                                                            if k != "cb_fields"}}, strict=True)
               for name, path in s.matrix.engines.items()}
    return Header(
        engines=engines, ab=tuple(ab_rows(outcomes, results)), max_bt=s.matrix.max_bts[0],
        max_bts=tuple(s.matrix.max_bts), model=model["label"], data=data_label, n=len(task.prompts),
        prompt=f"{s.workload.prompt}, {task.num_fewshot}-shot", filter=task.primary_filter, attn=s.matrix.attn,
        dtype=s.model.dtype, max_new_tokens=s.workload.max_new_tokens,
        thresholds=Thresholds(alpha=s.verdict.alpha, min_drop=s.verdict.min_drop),
        versions=Versions.from_json(versions, strict=True), runs=runs, command=s.command,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), exit_code=exit_code(outcomes),
        # workers, threads, model loads (None when every run came from the cache)
        pool=PoolRecord.from_json(pool, strict=True) if pool else None), cells


def sample_rows(task: TaskSpec, outcomes: list[ModeOutcome], results: dict[str, RunResult],
                scores: Scores) -> list[dict]:
    targets = task.targets()
    rows = []
    for o in outcomes:
        for key, is_twin in ((o.run_key, False), (o.twin_key, True)):
            if key is None or not o.ran:
                continue
            for smp, sc in zip(results[key].samples, scores.scored[key]):
                rows.append({"mode": o.mode, "max_bt": o.max_bt, "engine": o.engine, "axes": o.axes, "twin": is_twin,
                             "run": key, "index": smp.index, "status": smp.status, "error": smp.error,
                             "token_ids": smp.token_ids, "text": smp.text,
                             "answer": sc.answers[task.primary_filter], "answers": sc.answers,
                             "correct": scores.correct[key][smp.index], "target": targets[smp.index]})
    return rows


def summarise(p: Prepared, results: dict[str, RunResult], scores: Scores, pool: dict | None = None) -> Summary:
    folders = {job.key: job.job_dir for job in p.jobs}  # run key -> its folder (named by the job hash)
    header, cells = build_summary(p.settings, p.task, p.source.label, p.model, p.plan, results, scores.outcomes,
                                  p.probes, folders, pool)
    return Summary(header, tuple(cells), scores.outcomes, sample_rows(p.task, scores.outcomes, results, scores))
