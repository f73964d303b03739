"""The data flow of one `evalharness gsm8k` run: settings -> task and plan -> engine runs -> scores -> verdicts ->
reports. Engine runs are cached in the output folder by a hash of everything that determines them, so a re-run
with the same folder recomputes only what is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import data as data_mod
from . import models
from .config import (MODES, REFERENCE_MODE, Capabilities, Plan, UsageError, axes_matrix, parse_injections,
                     plan_runs)
from .engine import Job
from .engine.process import default_limits
from .report import write_markdown
from .html_report import write_html
from .results import RunResult, atomic_write_json, atomic_write_jsonl
from .gsm8k import PROMPTS, GSM8KTask
from .settings import Settings
from .store import job_hash, save_settings, settings_json
from .confirm import confirm, reruns_needed
from .verdict import ModeOutcome, Thresholds, Verdict, decide, exit_code


def detect_cuda() -> bool:
    import torch  # only to ask; the parent never allocates on the GPU

    return torch.cuda.is_available()


def engine_interpreter(engine: str | None) -> tuple[str, str | None]:
    """--engine PATH: a python interpreter, a virtual environment, or a folder holding another transformers build
    (put first on the workers' PYTHONPATH). Returns (python, extra PYTHONPATH)."""
    import sys

    if not engine:
        return sys.executable, None
    import shutil

    path = Path(engine).expanduser()
    if path.is_file():
        return str(path), None
    if "/" not in engine and shutil.which(engine):  # a command on PATH, e.g. python3
        return shutil.which(engine), None
    if (path / "bin" / "python").exists():
        return str(path / "bin" / "python"), None
    if path.is_dir():
        if not (path / "transformers").is_dir():
            raise UsageError(f"--engine {engine}: folder holds no transformers package (pip install --target it)")
        return sys.executable, str(path.resolve())
    raise UsageError(f"--engine {engine}: not an interpreter, a virtual environment or a folder")


def probe_engines(engines: dict[str, str | None], interpreters: dict[str, tuple[str, str | None]]) -> dict:
    """Versions and abilities of each engine's transformers; the default one is read in this process."""
    from .engine import probe_engine
    from .engine.worker import probe

    out = {}
    for name, path in engines.items():
        out[name] = probe() if path is None else probe_engine(*interpreters[name])
        if "error" in out[name]:
            raise UsageError(f"--engine {name}={path}: its transformers does not load ({out[name]['error']})")
    return out


def unsupported_modes(plan: Plan, probes: dict) -> dict[str, str]:
    """Cells an engine cannot express at all (graphs on one path only where use_cuda_graph is a bool): SKIPPED."""
    out = {}
    for mp in plan.modes:
        gv, gd = MODES[mp.mode]
        info = probes.get(mp.engine, {})
        if gv != gd and not info.get("tuple_graphs", True):
            out[mp.cell_id] = (f"transformers {info.get('transformers', '?')} takes only a bool use_cuda_graph: "
                               f"graphs on one path only ({mp.mode}) cannot be expressed")
    return out


def workload_fingerprint(task: GSM8KTask, model: dict, s: Settings) -> str:
    blob = json.dumps({"prompts": task.prompts, "model": model, "max_new_tokens": s.max_new_tokens,
                       "chat": s.prompt == "chat"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Evaluation:
    settings: Settings
    task: GSM8KTask
    model: dict
    plan: Plan
    results: dict[str, RunResult]
    correct: dict[str, list[bool]]
    scored: dict[str, list]
    outcomes: list[ModeOutcome]
    summary: dict
    out: Path

    @property
    def exit_code(self) -> int:
        return exit_code(self.outcomes)


def prepare(s: Settings, model: dict | None = None):
    """Everything that can fail on bad input, before any engine runs (each failure is a UsageError). A given `model`
    (as models.resolve returned it, e.g. where a plan was made) is used as is. Returns the settings as settled
    (a --task fixes the prompt style), the data source, the task, the model and the injections."""
    injections = parse_injections(s.inject, s.modes, list(s.engines))
    if s.task:
        from .lmeval_task import TaskSpec

        if s.prompt != "fewshot":
            raise UsageError("--task and --prompt: give one (the task's YAML fixes its prompt)")
        task = TaskSpec(s.task, data=s.data, fewshot_data=s.fewshot_data, num_fewshot=s.fewshot, limit=s.limit,
                        primary_filter=s.filter, include_path=s.include_path)
        s = dataclasses.replace(s, prompt=task.style)  # chat tasks get the chat template, as --prompt chat does
        model = model or models.resolve(s.model, s.gguf_file, s.dtype, s.trust_remote_code)
        return s, task.source, task, model, injections
    # only lm-eval's plain gsm8k samples its shots from the train split; gsm8k-cot ships its 8 exemplars
    shots = (s.fewshot if s.fewshot is not None else PROMPTS["fewshot"][1]) if s.prompt == "fewshot" else 0
    source = data_mod.resolve(s.data, s.fewshot_data, shots)
    task = GSM8KTask(source, style=s.prompt, num_fewshot=s.fewshot, limit=s.limit, primary_filter=s.filter)
    model = model or models.resolve(s.model, s.gguf_file, s.dtype, s.trust_remote_code)
    return s, source, task, model, injections


@dataclass
class Prepared:
    """Everything decided before any engine runs: the jobs, and what `finish` needs to turn their results into
    verdicts and reports (evaluate = prepare_jobs + run_jobs + finish; store.py's plan/run-job/merge split them)."""

    settings: Settings
    saved: dict  # the settings as given (settings.json), before prepare() filled anything in
    source: object
    task: GSM8KTask
    model: dict
    plan: Plan
    unsupported: dict[str, str]
    probes: dict
    interpreters: dict[str, tuple[str, str | None]]
    cuda: bool
    fingerprint: str
    timeout_s: float
    out: Path
    jobs: list[Job]


def default_out() -> Path:
    return Path("reports") / f"{time.strftime('%Y%m%d-%H%M%S')}-gsm8k"


def ensure_writable_folder(folder: Path, flag: str) -> None:
    """Create `folder` (and its parents) and prove a file can be written there, before any engine runs: an existing
    file, a path inside a file or a read-only place is one usage error, not a traceback after the run."""
    import tempfile

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {folder}: cannot write there ({e.strerror or e})")


def evaluate(s: Settings, on_start=None) -> Evaluation:
    """prepare_jobs + run_jobs + finish; `on_start()` is called once the settings proved valid, before any job."""
    p = prepare_jobs(s)
    save_settings(p)  # first, so that `--resume OUT` can finish a run killed at any later point
    if on_start is not None:
        on_start()
    pool: dict = {}
    watch = None
    if s.fail_fast:
        from .failfast import FailFast

        watch = FailFast(p.plan, p.jobs).check
    results = run_jobs(p.jobs, workers=s.jobs, devices=s.devices, progress=s.progress, cuda=p.cuda, report=pool,
                       watch=watch)
    if s.confirm:  # confirmation re-runs (graph runs, then twins when in doubt) until confirm.py needs no more
        while extra := reruns_needed(p.plan, results):
            jobs = [make_job(p, key, cfg) for key, cfg in extra.items()]
            p.jobs.extend(jobs)
            results.update(run_jobs(jobs, workers=s.jobs, devices=s.devices, progress=s.progress, cuda=p.cuda))
    return finish(p, results, pool=pool)


def prepare_jobs(s: Settings, cuda: bool | None = None, model: dict | None = None, probes: dict | None = None,
                 interpreters: dict | None = None) -> Prepared:
    """Plan the engine runs of `s` as jobs. Given `cuda`, `model`, `probes` or `interpreters` (from a plan made
    elsewhere) are used instead of asking this machine."""
    saved = settings_json(s)
    s, source, task, model, injections = prepare(s, model)
    attns = s.attns
    caps = Capabilities(cuda=detect_cuda() if cuda is None else cuda, attn=attns[0])
    if "torch-flash" in attns and not caps.cuda:
        raise UsageError("--attn torch-flash needs a CUDA GPU (PyTorch's FlashAttention varlen kernel); use --attn "
                         "sdpa on CPU")
    interpreters = interpreters or {name: engine_interpreter(path) for name, path in s.engines.items()}
    probes = probes or probe_engines(s.engines, interpreters)
    plan = plan_runs(s.modes, s.max_bts, caps, injections, engines=list(s.engines),
                     axes=axes_matrix(attns, s.asyncs, s.compiles, s.fast_paths), audit=s.audit, repeat=s.repeat,
                     oracle=s.oracle)
    unsupported = unsupported_modes(plan, probes)
    needed = {k for mp in plan.modes if mp.cell_id not in unsupported for k in (*mp.graph_runs, mp.twin) if k}
    out = s.out or default_out()
    ensure_writable_folder(out, "--out")
    if s.cache is not None:
        ensure_writable_folder(s.cache, "--cache")
    fingerprint = workload_fingerprint(task, model, s)
    # the hang signal is a stall (no finished request, no engine step); --timeout-s adds a limit on the total
    timeout = s.timeout_s
    stall = default_limits(caps.cuda).stall_s  # x3 with --compile: a first step may compile for minutes

    p = Prepared(s, saved, source, task, model, plan, unsupported, probes, interpreters, caps.cuda, fingerprint,
                 timeout, out, [])
    p.jobs = [make_job(p, key, cfg, stall) for key, cfg in plan.runs.items() if key in needed]
    return p


def make_job(p: Prepared, key: str, cfg, stall: float | None = None) -> Job:
    """The job of one engine run of p's plan (its cache folder named by everything that determines its output)."""
    s = p.settings
    python, pythonpath = p.interpreters[cfg.engine]
    job_key = job_hash(p.fingerprint, python, pythonpath, key, p.probes.get(cfg.engine, {}), p.model)
    label = f"[{', '.join(p.plan.served_by(key))}] {cfg.describe()}"
    return Job(key=key, engine=cfg, model={k: v for k, v in p.model.items() if k != "label"},
               prompts=p.task.prompts, max_new_tokens=s.max_new_tokens,
               job_dir=(s.cache or p.out / "runs") / job_key, chat=s.prompt == "chat", timeout_s=p.timeout_s,
               stall_s=(stall if stall is not None else default_limits(p.cuda).stall_s) * (3 if cfg.compile_level else 1),
               label=label, python=python, pythonpath=pythonpath)


def finish(p: Prepared, results: dict[str, RunResult], pool: dict | None = None) -> Evaluation:
    """Job results (by run key) -> scores, verdicts, summary and reports in p.out."""
    s, task, model, plan, unsupported, probes = p.settings, p.task, p.model, p.plan, p.unsupported, p.probes
    scored = {key: task.score([smp.text for smp in r.samples]) for key, r in results.items()}
    correct = {key: [sc.correct[task.primary_filter] and smp.status == "ok" for sc, smp in zip(rows, results[key]
               .samples)] for key, rows in scored.items()}
    outcomes = []
    for mp in plan.modes:
        if mp.cell_id in unsupported:
            skipped = RunResult(key=mp.run, status="unsupported", samples=[], error=unsupported[mp.cell_id])
            outcomes.append(decide(mp, skipped, None, [], None, None))
            continue
        off = next((p for p in plan.modes if p.mode == REFERENCE_MODE and p.group == mp.group), None)
        others = {k: results[k] for k in (*mp.graph_runs[1:], *mp.twin_reruns) if k in results}
        outcomes.append(decide(mp, results[mp.run], results[mp.twin] if mp.twin else None, correct[mp.run],
                               results[off.run] if off else None, correct[off.run] if off else None,
                               Thresholds(s.alpha, s.min_drop), confirm(mp, plan, results), others))
    folders = {job.key: job.job_dir for job in p.jobs}  # run key -> its folder (named by the job hash)
    summary = build_summary(s, task, p.source.label, model, plan, results, outcomes, probes, folders)
    summary["pool"] = pool or None  # workers, threads, model loads (None when every run came from the cache)
    ev = Evaluation(s, task, model, plan, results, correct, scored, outcomes, summary, p.out)
    write_reports(ev)
    return ev


# Run statuses whose result is final and cached (result.json); the others are kept as failed.json and retried.
CACHED_STATUSES = ("ok", "failed_requests", "unsupported")


def lost_outside_engine(result: RunResult) -> bool:
    """Samples missing from a run whose worker finished without an engine error: its results.jsonl was cut short by
    something else (a deleted or truncated file), so the result says nothing about the engine and is not cached."""
    return (result.status == "failed_requests" and not result.meta.get("error")
            and any(smp.status == "missing" for smp in result.samples))


def cached_result(job: Job) -> RunResult | None:
    cached = job.job_dir / "result.json"
    if not cached.exists():
        return None
    try:
        return RunResult.from_json(json.loads(cached.read_text()))
    except (OSError, ValueError, KeyError, TypeError):  # a damaged cache entry is no result: run the job again
        cached.unlink(missing_ok=True)
        return None


def store_result(job: Job, result: RunResult) -> None:
    """Cache a final result (result.json); crashes, timeouts, worker errors and samples lost outside the engine are
    kept as failed.json instead, which the next run of the same folder retries and `evalharness merge` reads as this
    job's outcome."""
    if result.status in CACHED_STATUSES and not lost_outside_engine(result):
        atomic_write_json(job.job_dir / "result.json", result.to_json())
        (job.job_dir / "failed.json").unlink(missing_ok=True)
    else:
        atomic_write_json(job.job_dir / "failed.json", result.to_json())


def run_job_cached(job: Job, progress: bool = True, retries: int = 1) -> RunResult:
    """Run one job unless its folder already holds a finished result; a crashed or stalled worker is retried once in
    a fresh one. The job folder is locked while the job runs: another invocation sharing the cache waits, then reads
    the result, and never deletes files a live worker is writing."""
    return run_jobs([job], workers=1, progress=progress)[job.key]


def budget_for(jobs: list[Job], workers: int | str | None, devices: list[str] | None, cuda: bool):
    """--jobs N, or auto (the default on CUDA): the worker count and each worker's CPU threads (schedule.py), net of
    what other invocations on this machine hold. Returns (budget, GPU bytes per worker or None)."""
    from . import schedule, sizing

    cores = sizing.cpu_cores()
    other_workers, other_gpu = sizing.others()
    need = None
    if cuda:
        first = jobs[0]
        need = sizing.per_worker_bytes(first.model, first.prompts, first.max_new_tokens,
                                       max(j.engine.max_bt for j in jobs))
    if workers == "auto" or (not workers and cuda):
        free = None
        mem = sizing.gpu_memory(devices) if cuda else None
        if mem:  # what nvidia-smi sees free, less what other invocations claimed and have not allocated yet
            share = other_gpu // len(mem)
            free = [max(0, min(f, t - share)) for f, t in mem]
        return schedule.auto_budget(len(jobs), cores, cuda, len(devices or [None]), free, need, other_workers), need
    n = worker_count(workers or 0, devices)
    return schedule.fixed_budget(n, cores, other_workers), need


def worker_count(jobs: int | None, devices: list[str] | None) -> int:
    """--jobs, or by default one worker per --devices entry (one worker without devices)."""
    return max(1, jobs or (len(devices) if devices else 1))


def run_jobs(jobs: list[Job], workers: int | str | None = 1, devices: list[str] | None = None, progress: bool = True,
             cuda: bool = False, report: dict | None = None, watch=None) -> dict[str, RunResult]:
    """Run the jobs not already cached on a pool of reused workers (engine/pool.py); with `devices`, every worker
    gets one GPU (CUDA_VISIBLE_DEVICES), round robin, so several workers may share a large GPU. Prints the chosen
    worker count and thread budget in one line; `report` receives the pool's account (workers, model loads);
    `watch` (--fail-fast, failfast.FailFast.check) names the runs to stop as results come in."""
    import sys

    from .engine.pool import run_pool

    results = {job.key: r for job in jobs if (r := cached_result(job)) is not None}
    todo = [job for job in jobs if job.key not in results]
    if todo:
        from .locking import locked
        from .sizing import Claim

        budget, need = budget_for(todo, workers, devices, cuda)
        print(budget.line(), file=sys.stderr, flush=True)
        with Claim(budget.workers, budget.workers * (need or 0)):
            got, pool = run_pool(todo, budget, devices, progress, on_result=store_result, guard=locked,
                                 cached=cached_result, watch=watch)
        results.update(got)
        if report is not None:
            report.update(pool.to_json())
    return {job.key: results[job.key] for job in jobs}


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
          folders: dict[str, Path] | None = None) -> dict:
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
    cell = {
        "id": o.cell_id, "engine": o.engine, "axes": o.axes,
        "max_bt": o.max_bt, "mode": o.mode, "verdict": o.verdict, "reason": o.reason, "accuracy": o.accuracy, "finished": o.finished,
        "accuracy_ci": list(o.accuracy_ci) if o.accuracy_ci else None, "n": o.n, "correct": o.correct,
        "twin_mismatches": o.twin_mismatches, "twin_compared": o.twin_compared, "failed_requests": o.failed_requests,
        "twin_failed_requests": o.twin_failed_requests, "p_value": o.p_value, "delta_vs_off": o.delta_vs_off,
        "inject": o.inject, "error_class": o.error_class, "run": o.run_key, "twin": o.twin_key, "served_by": served,
        "run_id": name(o.run_key) if o.ran else None, "twin_id": name(o.twin_key) if o.twin_key and o.ran else None,
        "notes": o.notes, "transformers": version,
        "resolved_engine": run.meta.get("resolved", {}),
        "first_mismatches": [{"index": m.index, "token": m.position} for m in
                             (o.comparison.mismatches[:5] if o.comparison else [])],
        "log_tail": run.log_tail[-5:],
        "attribution": run.meta.get("audit"),
        "confirmation": o.confirmation.to_json() if o.confirmation else None,
        "repeats": _repeats(o, plan),
        "stale_constants": o.stale_constants.get("first", []) if o.stale_constants else None,
        "stale_constants_total": o.stale_constants.get("total") if o.stale_constants else None,
        "constant_check": {k: v for k, v in o.stale_constants.items() if k != "first"} if o.stale_constants else None,
    }
    cell.update({k: v for k, v in _run_figures(run).items() if k != "generated_tokens"})
    # where a failed run's log is: the run's (or else the twin's) folder on disk
    failed = next((k for k in (o.run_key, o.twin_key) if k and k in results and results[k].status not in
                   CACHED_STATUSES), None)
    cell["worker_log"] = str(folders[failed] / "worker.log") if failed in folders else None
    return cell


def ab_rows(outcomes: list[ModeOutcome], results: dict[str, RunResult]) -> list[dict]:
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

            rows.append({"max_bt": a.max_bt, "axes": a.axes, "mode": a.mode, "a": a.engine, "b": b.engine,
                         "accuracy_a": a.accuracy, "accuracy_b": b.accuracy,
                         "delta": paired.delta if paired.n else None, "p_value": mcnemar_exact(paired.only_a,
                                                                                              paired.only_b),
                         "flipped_down": paired.only_a, "flipped_up": paired.only_b,
                         "samples_per_s_a": fa["samples_per_s"], "samples_per_s_b": fb["samples_per_s"],
                         "samples_per_s_change_pct": change(fa["samples_per_s"], fb["samples_per_s"]),
                         "tokens_per_s_a": fa["tokens_per_s"], "tokens_per_s_b": fb["tokens_per_s"],
                         "tokens_per_s_change_pct": change(fa["tokens_per_s"], fb["tokens_per_s"]),
                         "peak_mem_gb_a": fa["peak_mem_gb"], "peak_mem_gb_b": fb["peak_mem_gb"],
                         "verdict_a": a.verdict, "verdict_b": b.verdict})
    return rows


def build_summary(s: Settings, task: GSM8KTask, data_label: str, model: dict, plan: Plan,
                  results: dict[str, RunResult], outcomes: list[ModeOutcome], probes: dict | None = None,
                  folders: dict[str, Path] | None = None) -> dict:
    cells = [_cell(o, plan, results, probes, folders) for o in outcomes]
    modes: dict[str, dict] = {}
    for c in cells:  # one max_bt: that cell; a sweep: the worst cell of the mode
        if c["mode"] not in modes or Verdict(c["verdict"]).severity > Verdict(modes[c["mode"]]["verdict"]).severity:
            modes[c["mode"]] = c
    versions = next((r.meta["versions"] for r in results.values() if r.meta.get("versions")), {})
    runs = {}
    for key, cfg in plan.runs.items():
        if key not in results:  # only needed by cells an engine cannot express
            continue
        r = results[key]
        runs[key] = {"id": folders[key].name if key in (folders or {}) else key,
                     "folder": str(folders[key]) if key in (folders or {}) else None, "config": cfg.describe(), "engine": dataclasses.asdict(cfg), "served": plan.served_by(key),
                     "status": r.status, "error_class": r.error_class, "error": r.error,
                     "resolved": r.meta.get("resolved", {}), "notes": r.meta.get("notes", []), **_run_figures(r),
                     # the worker's side: its whole time on this job, the model load it paid (0: reused), which one
                     "job_wall_s": r.meta.get("wall_s"), "load_s": r.meta.get("load_s"),
                     "generate_s": r.meta.get("generate_s"), "worker_pid": (r.meta.get("worker") or {}).get("pid"),
                     "attempts": r.meta.get("attempts")}
    return {
        "modes": modes, "cells": cells, "cells_by_id": {c["id"]: c for c in cells},
        # each engine's path and what its probe read (versions, tuple graphs), less the raw config field list
        "engines": {name: {"path": path, **{k: v for k, v in (probes or {}).get(name, {}).items() if k != "cb_fields"}}
                    for name, path in s.engines.items()},
        "ab": ab_rows(outcomes, results),
        "max_bt": s.max_bts[0], "max_bts": s.max_bts, "model": model["label"], "data": data_label,
        "n": len(task.prompts), "prompt": f"{s.prompt}, {task.num_fewshot}-shot", "filter": task.primary_filter,
        "attn": s.attn, "dtype": s.dtype, "max_new_tokens": s.max_new_tokens,
        "thresholds": {"alpha": s.alpha, "min_drop": s.min_drop}, "versions": versions, "runs": runs,
        "command": s.command, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "exit_code": exit_code(outcomes),
    }


def sample_rows(ev: Evaluation) -> list[dict]:
    targets = ev.task.targets()
    rows = []
    for o in ev.outcomes:
        for key, is_twin in ((o.run_key, False), (o.twin_key, True)):
            if key is None or not o.ran:
                continue
            r, scored = ev.results[key], ev.scored[key]
            for smp, sc in zip(r.samples, scored):
                rows.append({"mode": o.mode, "max_bt": o.max_bt, "engine": o.engine, "axes": o.axes, "twin": is_twin, "run": key, "index": smp.index,
                             "status": smp.status, "error": smp.error, "token_ids": smp.token_ids, "text": smp.text,
                             "answer": sc.answers[ev.task.primary_filter], "answers": sc.answers,
                             "correct": ev.correct[key][smp.index], "target": targets[smp.index]})
    return rows


def write_reports(ev: Evaluation) -> None:
    atomic_write_jsonl(ev.out / "samples.jsonl", sample_rows(ev))
    atomic_write_json(ev.out / "summary.json", ev.summary)
    write_markdown(ev.out / "report.md", ev.summary, ev.outcomes)
    write_html(ev.out / "report.html", ev.summary, ev.outcomes)
