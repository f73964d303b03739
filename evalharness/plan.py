"""Plan: the jobs of a run, from its settings. Everything that can fail on bad input fails here, before any engine
runs (each failure a UsageError): the injections, the task and its data, the model, the engines' probes. The result,
`Prepared`, holds the jobs and what the later stages need (evaluate = prepare_jobs + execute.run_jobs + finish;
fanout.py's plan/run-job/merge split them across machines).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import models
from .config import MODES, Capabilities, Plan, UsageError, axes_matrix, plan_runs
from .engine import Job
from .engine.process import default_limits
from .execute import detect_cuda, engine_interpreter, probe_engines
from .lmeval_task import TaskSpec
from .parsers import parse_injections
from .settings import Settings, replace
from .store import job_hash, settings_json


def unsupported_modes(plan: Plan, probes: dict) -> dict[str, str]:
    """Cells left out of the run, SKIPPED with the reason, their jobs never scheduled:
    - what an engine cannot express at all (graphs on one path only where use_cuda_graph is a bool);
    - a decode-only graph mode (`decode`) for a model that the engine gives no decode fast path (sliding-window
      layers: the probe's `decode_path`, transformers_cb.decode_path), where no graph can be captured: its graph run
      and twin would only compete with the runs that matter, for a SKIPPED the verdict would give anyway. A cell
      with an injected fault keeps its runs (it was asked to run); an unknown `decode_path` keeps them too.
    `on` keeps its runs: its varlen graphs are tested (the verdict notes that its decode path captured none)."""
    out = {}
    for mp in plan.modes:
        gv, gd = MODES[mp.mode]
        info = probes.get(mp.engine, {})
        if gv != gd and not info.get("tuple_graphs", True):
            out[mp.cell_id] = (f"transformers {info.get('transformers', '?')} takes only a bool use_cuda_graph: "
                               f"graphs on one path only ({mp.mode}) cannot be expressed")
        elif gd and not gv and not mp.fault and (info.get("decode_path") or {}).get("available") is False:
            out[mp.cell_id] = no_decode_path(info)
    return out


def no_decode_path(info: dict) -> str:
    blocked = " and ".join((info.get("decode_path") or {}).get("blocked") or ["some"])
    return (f"transformers {info.get('transformers', '?')} gives this model no decode fast path (its {blocked} "
            "layers' paged cache has no block table): its decode batches run through the varlen path, so a graph "
            "run on the decode path alone would capture no CUDA graph; not run (neither the graph run nor its twin)")


def workload_fingerprint(task: TaskSpec, model: dict, s: Settings) -> str:
    w = s.workload  # the blob's keys and values as the flat settings gave them: cached runs keep their key
    blob = json.dumps({"prompts": task.prompts, "model": model, "max_new_tokens": w.max_new_tokens,
                       "chat": w.prompt == "chat"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare(s: Settings, model: dict | None = None):
    """Everything that can fail on bad input, before any engine runs (each failure is a UsageError). A given `model`
    (as models.resolve returned it, e.g. where a plan was made) is used as is. Returns the settings as settled
    (a --task fixes the prompt style), the data source, the task, the model and the injections."""
    injections = parse_injections(s.matrix.inject, s.matrix.modes, list(s.matrix.engines))
    w = s.workload
    if w.task and w.prompt != "fewshot":
        raise UsageError("--task and --prompt: give one (the task's YAML fixes its prompt)")
    # --prompt STYLE is --task STYLE_TASKS[STYLE] on the embedded GSM8K copy (or --data)
    task = TaskSpec(w.task, data=w.data, fewshot_data=w.fewshot_data, num_fewshot=w.fewshot, limit=w.limit,
                    primary_filter=w.filter, include_path=w.include_path, prompt=None if w.task else w.prompt)
    s = replace(s, prompt=task.style)  # chat tasks get the chat template, as --prompt chat does
    m = s.model
    model = model or models.resolve(m.name, m.gguf_file, m.dtype, m.trust_remote_code)
    return s, task.source, task, model, injections


@dataclass
class Prepared:
    """Everything decided before any engine runs: the jobs, and what `finish` needs to turn their results into
    verdicts and reports."""

    settings: Settings
    saved: dict  # the settings as given (settings.json), before prepare() filled anything in
    source: object
    task: TaskSpec
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
    # seconds of prepare_jobs' steps: task_s (settings, model, task and prompts), cuda_s, probes_s, plan_s
    timings: dict = field(default_factory=dict)


def default_out() -> Path:
    return Path("reports") / f"{time.strftime('%Y%m%d-%H%M%S')}-gsm8k"


def check_folder(folder: Path, flag: str) -> None:
    """What ensure_writable_folder would refuse, found without creating anything: a file in the way, a path inside a
    file, a nearest existing folder this user cannot write."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {folder}: exists and is not a folder")
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {folder}: cannot write there (Not a directory)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {folder}: cannot write there (Permission denied)")


def ensure_writable_folder(folder: Path, flag: str) -> None:
    """Create `folder` (and its parents) and prove a file can be written there, before any engine runs: an existing
    file, a path inside a file or a read-only place is one usage error, not a traceback after the run."""
    import tempfile

    folder = Path(folder)
    check_folder(folder, flag)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {folder}: cannot write there ({e.strerror or e})")


def prepare_jobs(s: Settings, cuda: bool | None = None, model: dict | None = None, probes: dict | None = None,
                 interpreters: dict | None = None) -> Prepared:
    """Plan the engine runs of `s` as jobs. Given `cuda`, `model`, `probes` or `interpreters` (from a plan made
    elsewhere) are used instead of asking this machine."""
    saved = settings_json(s)
    out = s.output.folder or default_out()
    check_folder(out, "--out")  # before the model is fetched (minutes on a fresh machine), creating nothing yet
    if s.execution.cache is not None:
        check_folder(s.execution.cache, "--cache")
    marks = [time.monotonic()]
    s, source, task, model, injections = prepare(s, model)
    marks.append(time.monotonic())
    mx = s.matrix
    attns = mx.attns
    caps = Capabilities(cuda=detect_cuda() if cuda is None else cuda, attn=attns[0])
    marks.append(time.monotonic())
    if "torch-flash" in attns and not caps.cuda:
        raise UsageError("--attn torch-flash needs a CUDA GPU (PyTorch's FlashAttention varlen kernel); use --attn "
                         "sdpa on CPU")
    if s.execution.mps == "on" and not caps.cuda:
        raise UsageError("--mps needs a CUDA GPU (it shares each GPU between the workers' processes)")
    interpreters = interpreters or {name: engine_interpreter(path) for name, path in mx.engines.items()}
    probes = probes or probe_engines(mx.engines, interpreters, models.engine_spec(model))
    marks.append(time.monotonic())
    plan = plan_runs(mx.modes, mx.max_bts, caps, injections, engines=list(mx.engines),
                     axes=axes_matrix(attns, mx.asyncs, mx.compiles, mx.fast_paths), audit=mx.audit,
                     repeat=s.verdict.repeat, oracle=s.verdict.oracle)
    unsupported = unsupported_modes(plan, probes)
    needed = {k for mp in plan.modes if mp.cell_id not in unsupported for k in (*mp.graph_runs, mp.twin) if k}
    ensure_writable_folder(out, "--out")
    if s.execution.cache is not None:
        ensure_writable_folder(s.execution.cache, "--cache")
    fingerprint = workload_fingerprint(task, model, s)
    # the hang signal is a stall (no finished request, no engine step); --timeout-s adds a limit on the total
    timeout = s.execution.timeout_s
    stall = default_limits(caps.cuda).stall_s  # x3 with --compile: a first step may compile for minutes

    marks.append(time.monotonic())
    steps = ("task_s", "cuda_s", "probes_s", "plan_s")
    timings = {name: round(b - a, 2) for name, a, b in zip(steps, marks, marks[1:])}
    p = Prepared(s, saved, source, task, model, plan, unsupported, probes, interpreters, caps.cuda, fingerprint,
                 timeout, out, [], timings)
    p.jobs = [make_job(p, key, cfg, stall) for key, cfg in plan.runs.items() if key in needed]
    return p


def make_job(p: Prepared, key: str, cfg, stall: float | None = None) -> Job:
    """The job of one engine run of p's plan (its cache folder named by everything that determines its output)."""
    s = p.settings
    python, pythonpath = p.interpreters[cfg.engine]
    # the probe's decode_path only plans (it follows from the model and the transformers build, both in the hash)
    probe = {k: v for k, v in p.probes.get(cfg.engine, {}).items() if k != "decode_path"}
    job_key = job_hash(p.fingerprint, python, pythonpath, key, probe, p.model)
    label = f"[{', '.join(p.plan.served_by(key))}] {cfg.describe()}"
    return Job(key=key, engine=cfg, model=models.engine_spec(p.model),
               prompts=p.task.prompts, max_new_tokens=s.workload.max_new_tokens,
               job_dir=(s.execution.cache or p.out / "runs") / job_key, chat=s.workload.prompt == "chat",
               timeout_s=p.timeout_s,
               stall_s=(stall if stall is not None else default_limits(p.cuda).stall_s) * (3 if cfg.compile_level else 1),
               label=label, python=python, pythonpath=pythonpath)
