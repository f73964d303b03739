"""One job's run in a worker process: reads JOB_DIR/job.json, runs transformers' continuous-batching `generate_batch`
once, and writes
- JOB_DIR/results.jsonl: one line per finished request, appended (and flushed) as each finishes, so a crash keeps
  what was already computed;
- JOB_DIR/meta.json: versions, the engine configuration as transformers resolved it, timings and memory
  (written atomically at the end; its absence means the worker died);
and prints `PROGRESS done total` lines on stdout for the parent's progress bar, `BEAT` every few seconds while the
engine steps and `PHASE load|generate` (the parent's stall detection). `WorkerState` is what a reused worker keeps
between jobs (worker.py runs the jobs).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from ..faults import fault as fault_entry
from ..results import atomic_write_json
from . import patches
from .transformers_cb import build_cb_config, cb_attention, load_model, read_resolved, versions, workload_blocks

log = logging.getLogger("evalharness.worker")


_OUT_LOCK = threading.Lock()


def emit(line: str) -> None:
    """One protocol line on stdout (PROGRESS, BEAT, PHASE, DONE), written whole: the generation thread beats while
    the main thread reports finished requests."""
    with _OUT_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


BEAT_EVERY_S = 2.0
_last_beat = [0.0]
# when this module was imported: a worker imports it first thing (worker.py), so a worker's first job can say how long
# the process took to be ready for it (its torch import included)
IMPORTED = time.monotonic()


def beat() -> None:
    """At most one BEAT line every BEAT_EVERY_S seconds, called from the engine's step: the parent's sign of life."""
    now = time.monotonic()
    if now - _last_beat[0] >= BEAT_EVERY_S:
        _last_beat[0] = now
        emit("BEAT")


@dataclass
class WorkerState:
    """What a worker keeps between jobs: the loaded model (one load per worker) and the process-wide patches it was
    set up with. Jobs of one worker must share the patch set (the pool keys workers by it; see schedule.worker_key);
    padding is switched per job (patches.set_padding), the perturb hook removed after each job."""

    model_key: str | None = None
    lm: object = None
    tokenizer: object = None
    load_s: float | None = None
    patch_key: str | None = None
    jobs: int = 0
    heartbeat: bool = False
    auditor: object = None
    graph_counts: dict | None = None  # CUDA graphs captured per path by the current job (patches.count_graph_captures)
    constant_hooks: bool = False  # the stale-constant check's hooks are installed (once per worker)
    constants: object = None  # the current job's audit.ConstantCheck (None: not checked)


def run(job_dir: Path, state: WorkerState | None = None) -> int:
    job = json.loads((job_dir / "job.json").read_text())
    meta: dict = {"status": "running", "engine": job["engine"], "notes": [], "phase": "setup"}
    try:
        return _run(job_dir, job, meta, state or WorkerState())
    except Exception as e:  # one line for the report, the traceback for the log
        log.error("worker failed during %s:\n%s", meta["phase"], traceback.format_exc())
        meta.update(status="error", error=f"{type(e).__name__}: {e}".splitlines()[0][:500])
        atomic_write_json(job_dir / "meta.json", meta)
        return 3


def _run(job_dir: Path, job: dict, meta: dict, state: WorkerState) -> int:
    engine, model_spec = job["engine"], job["model"]
    results_path = job_dir / "results.jsonl"
    t_start = time.perf_counter()
    # where the job's time goes besides load_s and generate_s (meta.json "timings", seconds): worker_start_s (the
    # worker's first job only: from importing this module to this job), imports_s, setup_s (patches, the CB config),
    # finish_s (after generate_batch: reading back, meta.json)
    timings: dict = {"worker_start_s": round(time.monotonic() - IMPORTED, 3) if not state.jobs else None}
    meta["timings"] = timings

    import torch
    import transformers
    from transformers import GenerationConfig
    from transformers.generation.continuous_batching import continuous_api

    timings["imports_s"] = round(time.perf_counter() - t_start, 3)

    meta["versions"] = versions()
    version = transformers.__version__

    # Engine-side patches first: they wrap classes the manager will instantiate. Process-wide ones only once.
    attn = engine["attn"]
    if attn == "torch-flash":
        from . import torch_flash

        attn = torch_flash.register()
    elif attn in ("sdpa", "eager"):
        attn = cb_attention(attn)
    from ..schedule import patch_key

    fault = fault_entry(engine.get("fault"))

    key = patch_key(engine)
    if state.patch_key is None:
        if fault.engine_patch is not None:
            fault.engine_patch()
        if engine.get("audit"):
            from ..audit import Auditor
            from . import audit_hooks

            # each finding is saved at once: a run that then crashes or times out keeps its attribution
            auditor = Auditor(keep_all=engine["audit"] == "all",
                              on_finding=lambda j: atomic_write_json(job_dir / "audit.json", j))
            audit_hooks.install(auditor)
            state.auditor = auditor
        if not state.heartbeat:
            state.heartbeat = patches.install_heartbeat(beat)
        # evidence that graphs were captured on each path (resolved.graphs_captured in meta.json and summary.json)
        state.graph_counts = patches.count_graph_captures()
        state.patch_key = key
    elif state.patch_key != key:
        raise RuntimeError(f"this worker was set up for patches {state.patch_key}, not {key}: a pool bug")
    auditor = state.auditor
    padding_notes = patches.set_padding(bool(engine.get("force_padding")), engine.get("pad_seqlen_k"))
    if state.graph_counts is not None:
        state.graph_counts.update(varlen=0, decode=0)  # this job's captures only

    # the stale-constant check: on in every job that may capture graphs; its hooks are installed once per worker
    constants = None
    if any(engine["cuda_graph"]):
        from ..audit import ConstantCheck

        constants = ConstantCheck(on_finding=lambda j: atomic_write_json(job_dir / "constants.json", j))
        if not state.constant_hooks:
            from . import audit_hooks

            audit_hooks.install_constant_check(lambda: state.constants)
            state.constant_hooks = True
    state.constants = constants

    _, unsupported = build_cb_config(engine, version)
    if unsupported:  # before loading anything
        meta.update(status="unsupported", reason=unsupported)
        atomic_write_json(job_dir / "meta.json", meta)
        return 0

    meta["phase"] = "load"
    emit("PHASE load")
    model_key = json.dumps([model_spec, attn], sort_keys=True)
    reused = state.model_key == model_key
    t0 = time.perf_counter()
    timings["setup_s"] = round(t0 - t_start - timings["imports_s"], 3)
    if not reused:
        state.lm = state.tokenizer = None
        state.lm, state.tokenizer = load_model(model_spec, attn)
        state.model_key, state.load_s = model_key, time.perf_counter() - t0
    lm, tokenizer = state.lm, state.tokenizer
    meta["load_s"] = 0.0 if reused else state.load_s  # what this job paid: nothing when the model was loaded
    meta["worker"] = {"pid": os.getpid(), "load_s": state.load_s, "job": state.jobs, "reused_model": reused,
                      "threads": torch.get_num_threads(), "gguf_cache": getattr(lm, "_evalharness_gguf_cache", None)}
    state.jobs += 1
    meta["phase"] = "generate"
    emit("PHASE generate")
    hook = fault.model_hook(lm, engine) if fault.model_hook is not None else None
    hooks = [hook] if hook is not None else []  # removed after the job: the model serves the next one

    prompts = job["prompts"]
    if job.get("chat"):
        inputs = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                tokenize=True) for p in prompts]
        inputs = [list(x["input_ids"]) if isinstance(x, dict) or hasattr(x, "keys") else list(x) for x in inputs]
    else:
        inputs = [tokenizer(p, add_special_tokens=job.get("add_special_tokens", True))["input_ids"] for p in prompts]
    cb_config, _ = build_cb_config(engine, version, workload_blocks(inputs, job["max_new_tokens"]))
    eos = tokenizer.eos_token_id
    gen_config = GenerationConfig(max_new_tokens=job["max_new_tokens"], do_sample=False,
                                  eos_token_id=eos if eos is not None else -1,
                                  pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)

    # a fault's per-job patch of the engine (reset-late, sync-reset, reset-probe): removed after this job (a PatchError
    # here fails the job before anything else is patched)
    job_patch = fault.job_patch() if fault.job_patch is not None else None

    # Tee finished requests to results.jsonl as they arrive: generate_batch keeps everything until it returns.
    manager_cls = continuous_api.ContinuousBatchingManager
    original_get, original_add = manager_cls.get_result, manager_cls.add_requests
    id_to_index: dict[str, int] = {}
    seen: dict = {"n": 0, "manager": None}
    timeout_hint = job.get("timeout_s") or 60
    fire = None if fault.after_first_result is None else lambda: fault.after_first_result(timeout_hint)
    total = len(inputs)
    out = results_path.open("a", encoding="utf-8")

    def add_requests(self, inputs, *args, **kwargs):
        first = getattr(self, "_request_counter", 0)
        ids = original_add(self, inputs, *args, **kwargs)
        if ids is None:  # transformers 5.5.x returns nothing; its ids are req_<counter>
            ids = [f"req_{first + i}" for i in range(len(inputs))]
        id_to_index.update({rid: i for i, rid in enumerate(ids)})
        seen["manager"] = self
        return ids

    def get_result(self, *args, **kwargs):
        result = original_get(self, *args, **kwargs)
        if result is not None and result.is_finished() and result.request_id in id_to_index:
            error = result.error
            tokens = list(result.generated_tokens)
            record = {"index": id_to_index[result.request_id], "token_ids": tokens,
                      "text": tokenizer.decode(tokens, skip_special_tokens=True),
                      "prompt_tokens": len(result.prompt_ids or []),
                      "status": "failed" if error is not None else "ok", "error": None if error is None else str(error)}
            out.write(json.dumps(record) + "\n")
            out.flush()
            seen["n"] += 1
            emit(f"PROGRESS {seen['n']} {total}")
            if seen["n"] == 1 and fire is not None:
                fire()
        return result

    manager_cls.add_requests, manager_cls.get_result = add_requests, get_result
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    emit(f"PROGRESS 0 {total}")
    t0 = time.perf_counter()
    try:
        lm.generate_batch(inputs=inputs, generation_config=gen_config, continuous_batching_config=cb_config,
                          progress_bar=False)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    except Exception as e:  # generate_batch mostly logs and returns; a raise here is an engine crash
        meta["error"] = f"{type(e).__name__}: {e}"
        log.error("generate_batch raised:\n%s", traceback.format_exc())
    finally:
        out.close()
        manager_cls.add_requests, manager_cls.get_result = original_add, original_get
        for hook in hooks:
            hook.remove()
        if job_patch is not None:
            job_patch.remove()
    meta["generate_s"] = time.perf_counter() - t0
    t_generated = time.perf_counter()
    meta["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    meta["resolved"] = read_resolved(seen["manager"])
    meta["notes"] += padding_notes
    if state.graph_counts is not None and any(engine["cuda_graph"]):
        meta["resolved"]["graphs_captured"] = dict(state.graph_counts)
    if job_patch is not None:  # what was patched and what it saw (reset-late: armed/fired; reset-probe: timings)
        meta["patch"] = job_patch.report()
        if meta["patch"].get("fired") == 0:
            meta["notes"].append(f"{fault.name} never fired: this run built no async IOs (async batching off?)")
    if auditor is not None:
        meta["audit"] = auditor.to_json()
    if constants is not None and constants.captures:
        meta["stale_constants"] = constants.to_json()
    meta["prompt_tokens_max"] = max((len(x) for x in inputs), default=0)
    meta["total_s"] = time.perf_counter() - t_start
    timings["finish_s"] = round(time.perf_counter() - t_generated, 3)
    meta["status"] = "done"
    atomic_write_json(job_dir / "meta.json", meta)
    seen["manager"] = None
    if torch.cuda.is_available():  # the next job of this worker sizes its own KV cache
        import gc

        gc.collect()
        torch.cuda.empty_cache()
    return 0
