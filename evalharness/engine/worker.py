"""One engine run in its own process: `python -m evalharness.engine.worker JOB_DIR`.

Reads JOB_DIR/job.json, runs transformers' continuous-batching `generate_batch` once, and writes
- JOB_DIR/results.jsonl: one line per finished request, appended (and flushed) as each finishes, so a crash keeps
  what was already computed;
- JOB_DIR/meta.json: versions, the engine configuration as transformers resolved it, timings and memory
  (written atomically at the end; its absence means the worker died);
and prints `PROGRESS done total` lines on stdout for the parent's progress bar. Logs go to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from ..faults import fault as fault_entry
from ..results import atomic_write_json
from . import patches

log = logging.getLogger("evalharness.worker")


def _versions() -> dict:
    import platform

    import torch
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
        out["device"] = torch.cuda.get_device_name(0)
    else:
        out["device"] = "cpu"
    return out


def _dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "auto": "auto"}[name]


def load_model(model: dict, attn: str):
    """Load weights from safetensors or GGUF only; never pickles; no remote code unless asked for."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"trust_remote_code": bool(model.get("trust_remote_code"))}
    if model.get("gguf_file"):
        kwargs["gguf_file"] = model["gguf_file"]
    else:
        kwargs["use_safetensors"] = True
    tokenizer = AutoTokenizer.from_pretrained(model["path"], **kwargs)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lm = AutoModelForCausalLM.from_pretrained(model["path"], dtype=_dtype(model.get("dtype", "auto")),
                                              attn_implementation=attn, **kwargs)
    lm = lm.to(device).eval()
    return lm, tokenizer


def workload_blocks(inputs: list[list[int]], max_new_tokens: int, block_size: int = 256) -> int:
    """A KV cache that holds every request at once: sized from the workload, not from free memory, so a run and its
    twin get the same cache (the padded KV read is capped by its size) and several workers can share one GPU."""
    return sum(-(-(len(x) + max_new_tokens) // block_size) for x in inputs) + 16


def _tuple_graphs(config_cls) -> bool:
    """Whether this ContinuousBatchingConfig's use_cuda_graph takes a (varlen, decode) tuple (5.6+) or a bool only."""
    field = config_cls.__dataclass_fields__.get("use_cuda_graph")
    return field is not None and "tuple" in str(field.type)


def _cb_config(engine: dict, version: str, num_blocks: int | None = None):
    """Build ContinuousBatchingConfig from the fields this transformers build has; report what it cannot express."""
    import dataclasses

    from transformers import ContinuousBatchingConfig

    fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    gv, gd = engine["cuda_graph"]
    kwargs = {"max_batch_tokens": engine["max_bt"]}
    tuple_ok = _tuple_graphs(ContinuousBatchingConfig)
    if gv != gd and not tuple_ok:
        return None, (f"transformers {version} takes only a bool use_cuda_graph: graphs on one path only "
                      "(varlen or decode) cannot be expressed")
    kwargs["use_cuda_graph"] = (gv, gd) if tuple_ok else gv
    if num_blocks and "num_blocks" in fields:
        kwargs["num_blocks"] = num_blocks
    if engine.get("use_async") is not None and "use_async_batching" in fields:
        kwargs["use_async_batching"] = engine["use_async"]
    if engine.get("compile_level") is not None:
        if "default_compile_level" not in fields:
            return None, f"transformers {version} has no default_compile_level: --compile cannot be expressed"
        kwargs["default_compile_level"] = engine["compile_level"]
    if engine.get("decode_fast_path") is False:
        if "max_blocks_per_request" not in fields:
            return None, f"transformers {version} has no max_blocks_per_request: the decode fast path cannot be off"
        kwargs["max_blocks_per_request"] = 0
    return ContinuousBatchingConfig(**kwargs), None


def _resolved(manager_like) -> dict:
    """What transformers actually resolved (graphs per path, decode fast path, async), read back after the run."""
    cfg = getattr(manager_like, "continuous_batching_config", None)
    if cfg is None:
        return {}
    out = {}
    for name in ("use_cuda_graph", "use_async_batching", "max_blocks_per_request", "max_batch_tokens", "num_blocks",
                 "max_requests_per_batch", "q_padding_interval_size", "kv_padding_interval_size"):
        value = getattr(cfg, name, None)
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def run(job_dir: Path) -> int:
    job = json.loads((job_dir / "job.json").read_text())
    meta: dict = {"status": "running", "engine": job["engine"], "notes": [], "phase": "setup"}
    try:
        return _run(job_dir, job, meta)
    except Exception as e:  # one line for the report, the traceback for the log
        log.error("worker failed during %s:\n%s", meta["phase"], traceback.format_exc())
        meta.update(status="error", error=f"{type(e).__name__}: {e}".splitlines()[0][:500])
        atomic_write_json(job_dir / "meta.json", meta)
        return 3


def _run(job_dir: Path, job: dict, meta: dict) -> int:
    engine, model_spec = job["engine"], job["model"]
    results_path = job_dir / "results.jsonl"
    t_start = time.perf_counter()

    import torch
    import transformers
    from transformers import GenerationConfig
    from transformers.generation.continuous_batching import continuous_api

    meta["versions"] = _versions()
    version = transformers.__version__

    # Engine-side patches first: they wrap classes the manager will instantiate.
    attn = engine["attn"]
    if attn == "torch-flash":
        from . import torch_flash

        attn = torch_flash.register()
    elif attn in ("sdpa", "eager"):
        attn = f"paged|{attn}"
    if engine.get("force_padding"):
        meta["notes"] += patches.force_padding(engine.get("pad_seqlen_k"))
    fault = fault_entry(engine.get("fault"))
    if fault.engine_patch is not None:
        fault.engine_patch()
    auditor = None
    if engine.get("audit"):
        from ..audit import Auditor
        from . import audit_hooks

        # each finding is saved at once: a run that then crashes or times out keeps its attribution
        auditor = Auditor(keep_all=engine["audit"] == "all",
                          on_finding=lambda j: atomic_write_json(job_dir / "audit.json", j))
        audit_hooks.install(auditor)

    _, unsupported = _cb_config(engine, version)
    if unsupported:  # before loading anything
        meta.update(status="unsupported", reason=unsupported)
        atomic_write_json(job_dir / "meta.json", meta)
        return 0

    meta["phase"] = "load"
    t0 = time.perf_counter()
    lm, tokenizer = load_model(model_spec, attn)
    meta["load_s"] = time.perf_counter() - t0
    meta["phase"] = "generate"
    if fault.model_hook is not None:
        fault.model_hook(lm, engine)

    prompts = job["prompts"]
    if job.get("chat"):
        inputs = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                tokenize=True) for p in prompts]
        inputs = [list(x["input_ids"]) if isinstance(x, dict) or hasattr(x, "keys") else list(x) for x in inputs]
    else:
        inputs = [tokenizer(p, add_special_tokens=job.get("add_special_tokens", True))["input_ids"] for p in prompts]
    cb_config, _ = _cb_config(engine, version, workload_blocks(inputs, job["max_new_tokens"]))
    eos = tokenizer.eos_token_id
    gen_config = GenerationConfig(max_new_tokens=job["max_new_tokens"], do_sample=False,
                                  eos_token_id=eos if eos is not None else -1,
                                  pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)

    # Tee finished requests to results.jsonl as they arrive: generate_batch keeps everything until it returns.
    manager_cls = continuous_api.ContinuousBatchingManager
    original_get, original_add = manager_cls.get_result, manager_cls.add_requests
    id_to_index: dict[str, int] = {}
    seen: dict = {"n": 0, "manager": None}
    timeout_hint = job.get("timeout_s", 60)
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
            print(f"PROGRESS {seen['n']} {total}", flush=True)
            if seen["n"] == 1 and fire is not None:
                fire()
        return result

    manager_cls.add_requests, manager_cls.get_result = add_requests, get_result
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    print(f"PROGRESS 0 {total}", flush=True)
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
    meta["generate_s"] = time.perf_counter() - t0
    meta["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    meta["resolved"] = _resolved(seen["manager"])
    if auditor is not None:
        meta["audit"] = auditor.to_json()
    meta["prompt_tokens_max"] = max((len(x) for x in inputs), default=0)
    meta["total_s"] = time.perf_counter() - t_start
    meta["status"] = "done"
    atomic_write_json(job_dir / "meta.json", meta)
    return 0


def probe() -> dict:
    """What this interpreter's transformers can express: read by the parent before planning (`--probe`)."""
    import dataclasses

    from transformers import ContinuousBatchingConfig

    fields = sorted(f.name for f in dataclasses.fields(ContinuousBatchingConfig))
    return {**_versions(), "tuple_graphs": _tuple_graphs(ContinuousBatchingConfig), "cb_fields": fields}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--probe":
        print("PROBE " + json.dumps(probe()), flush=True)
        return 0
    logging.basicConfig(level=os.environ.get("EVALHARNESS_WORKER_LOG", "WARNING"), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
