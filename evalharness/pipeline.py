"""The data flow of one `evalharness gsm8k` run, one stage per module: settings (settings.py) -> plan (plan.py: task,
model, probes, jobs) -> execute (execute.py: engine runs, cached in the output folder by a hash of everything that
determines them, so a re-run with the same folder recomputes only what is missing) -> score (score.py: scores and
verdicts) -> summarise (summary.py: one Summary, with the history's drift) -> the report files, written once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import time
from dataclasses import dataclass
from pathlib import Path

from . import history
from .config import Plan
from .execute import Engine, run_jobs
from .html_report import write_html
from .lmeval_task import TaskSpec
from .confirm import reruns_needed
from .plan import Prepared, make_job, prepare_jobs
from .report import markdown
from .results import RunResult, atomic_write_json, atomic_write_jsonl, atomic_write_text
from .score import Scores, score
from .settings import Settings
from .store import save_settings
from .summary import summarise
from .summary_doc import Summary
from .verdict import ModeOutcome


@dataclass(frozen=True)
class Evaluation:
    settings: Settings
    task: TaskSpec
    model: dict
    plan: Plan
    results: dict[str, RunResult]
    scores: Scores
    summary: Summary
    out: Path

    @property
    def outcomes(self) -> list[ModeOutcome]:
        return self.scores.outcomes

    @property
    def exit_code(self) -> int:
        return self.summary.exit_code


def evaluate(s: Settings, on_start=None, engine: Engine | None = None, **given) -> Evaluation:
    """One run: plan, execute, score, summarise, report. `on_start()` is called once the settings proved valid,
    before any job. The jobs run on the worker pool, or through `engine` (the seam: a fake one in tests); `given`
    (cuda, model, probes, interpreters) replaces asking this machine, as plan.prepare_jobs says."""
    t0 = time.monotonic()
    p = prepare_jobs(s, **given)
    save_settings(p)  # first, so that `--resume OUT` can finish a run killed at any later point
    if on_start is not None:
        on_start()
    pool: dict = {}
    watch = None
    if s.execution.fail_fast:
        from .failfast import FailFast

        watch = FailFast(p.plan, p.jobs).check
    run = s.execution
    with contextlib.ExitStack() as stack:
        from .engine.mps import Daemons

        env = Daemons(run.mps, run.devices, stack)  # MPS daemons, started by run_jobs where its workers need them
        t_jobs = time.monotonic()
        results = run_jobs(p.jobs, workers=run.jobs, devices=run.devices, progress=run.progress, cuda=p.cuda,
                           report=pool, watch=watch, engine=engine, env=env, idle=import_for_reports)
        t_confirm = time.monotonic()
        if s.verdict.confirm:  # confirmation re-runs (of graph runs and of their twins) until confirm.py needs no more
            while extra := reruns_needed(p.plan, results):
                jobs = [make_job(p, key, cfg) for key, cfg in extra.items()]
                p.jobs.extend(jobs)
                more: dict = {}
                results.update(run_jobs(jobs, workers=run.jobs, devices=run.devices, progress=run.progress,
                                        cuda=p.cuda, engine=engine, report=more, env=env))
                if more and pool:  # the re-runs' workers and model loads count too
                    pool["processes"] += more["processes"]
                    pool["model_loads"] += more["model_loads"]
                elif more:
                    pool.update(more)
    if pool:  # where the invocation's time went, for benchmarks/gpu_verdict.py (the pool's own account)
        pool["phases"] = {"prepare_s": round(t_jobs - t0, 2), "jobs_s": round(t_confirm - t_jobs, 2),
                          "confirm_s": round(time.monotonic() - t_confirm, 2)}
        pool["prepare"] = p.timings  # prepare_s by step: task_s, cuda_s, probes_s, plan_s
    return finish(p, results, pool=pool)


# what scoring and the reports import on first use (scipy.stats: ~2 s, matplotlib: ~1 s on 2 cores)
REPORT_IMPORTS = ("scipy.stats", "matplotlib.figure", "matplotlib.backends.backend_agg", "matplotlib.patches",
                  "matplotlib.ticker")


def import_for_reports() -> None:
    """Import what scoring and the reports need while the workers run (the pool calls it once, in the main thread,
    while it waits for them): these seconds would otherwise come after the slowest job, on the verdict's critical
    path. In the main thread, which is idle then anyway, rather than in a thread of its own. An import that fails here
    fails again, with its error, where it is used."""
    for name in REPORT_IMPORTS:
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def finish(p: Prepared, results: dict[str, RunResult], pool: dict | None = None) -> Evaluation:
    """Job results (by run key) -> scores and verdicts -> the summary (with --history, its drift; the history file
    gets this run's lines) -> the report files in p.out, each written once. `pool`: the worker pool's account."""
    scores = score(p, results)
    summary = summarise(p, results, scores, pool)
    if p.settings.output.history:
        summary = dataclasses.replace(summary, history=history.check(summary, p.task, p.out, p.settings.output.history,
                                                                     alpha=p.settings.verdict.alpha))
    write_reports(summary, p.out)
    return Evaluation(p.settings, p.task, p.model, p.plan, results, scores, summary, p.out)


def write_reports(summary: Summary, out: Path) -> None:
    """samples.jsonl, summary.json, report.md and report.html from the summary (and drift.json with --history)."""
    atomic_write_jsonl(out / "samples.jsonl", summary.samples)
    atomic_write_json(out / "summary.json", summary.to_json())
    check = summary.history
    if check is not None:
        atomic_write_json(out / "drift.json", check.to_json())
    atomic_write_text(out / "report.md", markdown(summary) + (check.markdown() if check else ""))
    write_html(out / "report.html", summary, drifts=check.drifts if check else None,
               baseline=check.baseline if check else None)
