"""transformers' side of an engine run: versions, model loading (safetensors or GGUF), the KV cache sized from the
workload, ContinuousBatchingConfig built from an engine configuration (and what transformers resolved, read back),
and the `--probe` of what this interpreter's transformers can express (for a given model too: whether its layers
allow the decode fast path).
"""

from __future__ import annotations


def versions() -> dict:
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
    """Load weights from safetensors or GGUF only; never pickles; no remote code unless asked for. A GGUF model goes
    through the verified dequantized cache (gguf_cache.py) unless EVALHARNESS_GGUF_CACHE=0."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import gguf_cache

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = _dtype(model.get("dtype", "auto"))
    if model.get("gguf_file") and gguf_cache.enabled():
        lm, tokenizer, info = gguf_cache.load(model, attn, dtype, model.get("dtype", "auto"))
        lm = lm.to(device).eval()
        lm._evalharness_gguf_cache = info
        return lm, tokenizer
    kwargs = {"trust_remote_code": bool(model.get("trust_remote_code"))}
    if model.get("gguf_file"):
        kwargs["gguf_file"] = model["gguf_file"]
    else:
        kwargs["use_safetensors"] = True
    tokenizer = AutoTokenizer.from_pretrained(model["path"], **kwargs)
    lm = AutoModelForCausalLM.from_pretrained(model["path"], dtype=dtype, attn_implementation=attn, **kwargs)
    lm = lm.to(device).eval()
    return lm, tokenizer


def workload_blocks(inputs: list[list[int]], max_new_tokens: int, block_size: int = 256) -> int:
    """A KV cache that holds every request at once: sized from the workload, not from free memory, so a run and its
    twin get the same cache (the padded KV read is capped by its size) and several workers can share one GPU."""
    return blocks_for([len(x) for x in inputs], max_new_tokens, block_size)


def blocks_for(prompt_lengths: list[int], max_new_tokens: int, block_size: int = 256) -> int:
    return sum(-(-(n + max_new_tokens) // block_size) for n in prompt_lengths) + 16


def _tuple_graphs(config_cls) -> bool:
    """Whether this ContinuousBatchingConfig's use_cuda_graph takes a (varlen, decode) tuple (5.6+) or a bool only."""
    field = config_cls.__dataclass_fields__.get("use_cuda_graph")
    return field is not None and "tuple" in str(field.type)


def cb_fields() -> frozenset[str]:
    """The fields of this transformers' ContinuousBatchingConfig: what a run can ask of its engine."""
    import dataclasses

    from transformers import ContinuousBatchingConfig

    return frozenset(f.name for f in dataclasses.fields(ContinuousBatchingConfig))


def picks_attention() -> bool:
    """Whether this transformers' CB engine takes its attention from `auto_switch_to_flash` (5.19+): there `sdpa` is a
    CB implementation as it stands and `paged|sdpa` a deprecated alias (stripped with a FutureWarning; "removed in
    v5.23"), and the engine switches sdpa and eager to a flash kernel when one is installed unless told not to.
    Before 5.19 only `paged|...` names keep the chosen implementation."""
    return "auto_switch_to_flash" in cb_fields()


def cb_attention(attn: str) -> str:
    """The attn_implementation that makes the CB engine run `attn` (sdpa or eager) and nothing else."""
    if attn == "sdpa" and picks_attention():
        return "sdpa"
    return f"paged|{attn}"


def build_cb_config(engine: dict, version: str, num_blocks: int | None = None):
    """Build ContinuousBatchingConfig from the fields this transformers build has; report what it cannot express."""
    from transformers import ContinuousBatchingConfig

    fields = cb_fields()
    gv, gd = engine["cuda_graph"]
    kwargs = {"max_batch_tokens": engine["max_bt"]}
    tuple_ok = _tuple_graphs(ContinuousBatchingConfig)
    if gv != gd and not tuple_ok:
        return None, (f"transformers {version} takes only a bool use_cuda_graph: graphs on one path only "
                      "(varlen or decode) cannot be expressed")
    kwargs["use_cuda_graph"] = (gv, gd) if tuple_ok else gv
    if "auto_switch_to_flash" in fields:  # the run's attention is --attn's, never swapped for an installed flash kernel
        kwargs["auto_switch_to_flash"] = False
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


def read_resolved(manager_like) -> dict:
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


def decode_path(model: dict) -> dict:
    """Whether this transformers' CB engine can give `model` its decode fast path (block tables), decided from the
    model's configuration alone (model_config.load_config: no weights) the way the engine decides it: the layers
    grouped by attention type with the engine's own `group_layers_by_attn_type` on `config.get_text_config()`, and
    every group's cache supporting a block table. 5.24: `ATTN_TYPE_TO_ALLOCATOR[type].supports_block_table` (False
    for sliding_attention); 5.5.x-5.17: `PagedAttentionCache` sets `max_blocks_per_request = 0` as soon as one group
    is sliding_attention. (The attention backend and the device are the plan's side: config.Capabilities.)

    Returns {"available": True/False, "layer_types": [...], "blocked": [types without a block table]}, or
    {"available": None, "error": ...} where the configuration cannot be read or a layer type is unknown to this
    engine: the plan then runs decode as it always did, and the verdict reads what the run captured."""
    try:
        from transformers.generation.continuous_batching import cache as cb_cache

        from .model_config import load_config

        config = load_config(model).get_text_config()
        groups = cb_cache.group_layers_by_attn_type(config)
        # 5.24: {type: layer indices}; 5.5.x-5.17: (layer groups, the type of each group)
        types = sorted(groups) if isinstance(groups, dict) else sorted(set(groups[1]))
        allocators = getattr(cb_cache, "ATTN_TYPE_TO_ALLOCATOR", None)
        if allocators is not None:
            blocked = [t for t in types if not allocators[t].supports_block_table]
        elif set(types) <= {"full_attention", "sliding_attention"}:
            blocked = [t for t in types if t == "sliding_attention"]
        else:
            raise ValueError(f"layer types {types}: not known to this engine's paged cache")
    except Exception as e:  # noqa: BLE001 - anything unreadable keeps the plan as it was; said in the probe
        return {"available": None, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    return {"available": not blocked, "layer_types": types, "blocked": blocked}


def probe(model: dict | None = None) -> dict:
    """What this interpreter's transformers can express: read by the parent before planning (`--probe`). Given the
    model, also whether it can have the decode fast path (`decode_path`)."""
    from transformers import ContinuousBatchingConfig

    out = {**versions(), "tuple_graphs": _tuple_graphs(ContinuousBatchingConfig), "cb_fields": sorted(cb_fields())}
    if model is not None:
        out["decode_path"] = decode_path(model)
    return out
