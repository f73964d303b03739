"""A dequantized safetensors copy of a GGUF model, cached per (file SHA-256, dtype, transformers version), so that
every worker after the first loads plain safetensors instead of dequantizing the GGUF again (Qwen2.5-0.5B: 65-79 s
per worker on the H200).

Built once, under a lock (concurrent workers wait for the first): the model is loaded from the GGUF with
`GgufConfig(dequantize=True)` where this transformers has it (every weight unpacked to the requested dtype), the GGUF
quantizer is detached (`save_pretrained` refuses while it is attached: a dequantized model has nothing left to
quantize), the model and its tokenizer are saved, and the copy is loaded back and compared with what the GGUF load
gave: every parameter and buffer bit for bit (same names, dtypes, shapes and bytes), the model configuration, and the
tokenizer (vocabulary, special tokens, and the token ids of a probe text). Only then is the entry published
(`verified.json`). A copy that differs is refused (`refused.json` records why) and that model keeps loading from its
GGUF. The entry's folder name carries the key; `EVALHARNESS_GGUF_CACHE=0` turns the cache off.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

PROBE = "Question: Natalia sold clips to 48 of her friends in April. Answer: 48 / 2 = <<48/2=24>>24 é ü 日本 \n\t#### 72"
# bookkeeping, not computation: where it was loaded from, the writer's version, the class name save_pretrained records
IGNORED_CONFIG_KEYS = {"_name_or_path", "quantization_config", "transformers_version", "dtype", "torch_dtype",
                       "_attn_implementation_autoset", "_commit_hash", "architectures"}


def enabled() -> bool:
    return os.environ.get("EVALHARNESS_GGUF_CACHE", "1") != "0"


def root() -> Path:
    from ..models import cache_dir

    return cache_dir() / "dequantized"


def file_sha256(path: Path) -> str:
    """The GGUF's SHA-256, remembered next to the cache by (path, size, mtime) so that a worker hashes it once."""
    from ..models import sha256

    st = path.stat()
    memo = root() / "hashes.json"
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = sha256(path)
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, memo)
    return known[key]


def entry_dir(sha: str, dtype: str, transformers_version: str) -> Path:
    return root() / f"{sha[:16]}-{dtype}-tf{transformers_version}"


def _gguf_kwargs(model: dict) -> dict:
    """from_pretrained arguments for the GGUF load: GgufConfig(dequantize=True) where it exists (5.17+)."""
    kwargs = {"gguf_file": model["gguf_file"], "trust_remote_code": bool(model.get("trust_remote_code"))}
    try:
        import inspect

        from transformers import GgufConfig

        if "dequantize" in inspect.signature(GgufConfig.__init__).parameters:
            kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older builds dequantize every GGUF anyway
        pass
    return kwargs


def _detach_quantizer(lm) -> None:
    """A dequantized model holds plain tensors: forget the GGUF quantizer so that save_pretrained writes them."""
    for name in ("hf_quantizer", "quantization_method"):
        if getattr(lm, name, None) is not None:
            setattr(lm, name, None)
    for cfg in (lm.config, getattr(lm.config, "text_config", None)):
        if cfg is not None and hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
    if hasattr(lm, "is_quantized"):
        try:
            lm.is_quantized = False
        except AttributeError:  # a read-only property derived from the quantizer
            pass


def differences(a, b, tok_a, tok_b) -> list[str]:
    """Where two loaded models (and tokenizers) differ; empty when the copy is exact."""
    import torch

    out = []
    sa = {**dict(a.named_parameters()), **dict(a.named_buffers())}
    sb = {**dict(b.named_parameters()), **dict(b.named_buffers())}
    if sorted(sa) != sorted(sb):
        out.append(f"tensor names differ: {sorted(set(sa) ^ set(sb))[:5]}")
    for name in sorted(set(sa) & set(sb)):
        x, y = sa[name].detach().cpu(), sb[name].detach().cpu()
        if x.dtype != y.dtype or x.shape != y.shape:
            out.append(f"{name}: {x.dtype}{tuple(x.shape)} vs {y.dtype}{tuple(y.shape)}")
        # compared as raw bytes (reshape first: a 0-dim tensor, e.g. Gemma 3's scalar buffers, has no byte view)
        elif not torch.equal(x.contiguous().reshape(-1).view(torch.uint8), y.contiguous().reshape(-1).view(torch.uint8)):
            out.append(f"{name}: values differ")
    ca = {k: v for k, v in a.config.to_dict().items() if k not in IGNORED_CONFIG_KEYS}
    cb = {k: v for k, v in b.config.to_dict().items() if k not in IGNORED_CONFIG_KEYS}
    for key in sorted(set(ca) | set(cb)):
        if ca.get(key) != cb.get(key):
            out.append(f"config {key}: {ca.get(key)!r} vs {cb.get(key)!r}")
    if tok_a.get_vocab() != tok_b.get_vocab():
        out.append("tokenizer vocabularies differ")
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        if getattr(tok_a, attr, None) != getattr(tok_b, attr, None):
            out.append(f"tokenizer {attr}: {getattr(tok_a, attr, None)} vs {getattr(tok_b, attr, None)}")
    if tok_a(PROBE)["input_ids"] != tok_b(PROBE)["input_ids"]:
        out.append("tokenizer encodes the probe text differently")
    if getattr(tok_a, "chat_template", None) != getattr(tok_b, "chat_template", None):
        out.append("chat templates differ")
    return out


def load(model: dict, attn: str, dtype, dtype_name: str):
    """(model, tokenizer, info) for a GGUF model spec, through the cache; on the CPU (the caller moves it)."""
    import transformers
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(model["path"]) / model["gguf_file"]
    sha = file_sha256(gguf)
    entry = entry_dir(sha, dtype_name, transformers.__version__)
    info = {"entry": str(entry)}
    remote = bool(model.get("trust_remote_code"))

    def from_entry():
        tok = AutoTokenizer.from_pretrained(entry, trust_remote_code=remote)
        lm = AutoModelForCausalLM.from_pretrained(entry, dtype=dtype, attn_implementation=attn, use_safetensors=True,
                                                  trust_remote_code=remote)
        return lm, tok

    def from_gguf():
        tok = AutoTokenizer.from_pretrained(model["path"], gguf_file=model["gguf_file"], trust_remote_code=remote)
        lm = AutoModelForCausalLM.from_pretrained(model["path"], dtype=dtype, attn_implementation=attn,
                                                  **_gguf_kwargs(model))
        return lm, tok

    refused = entry.with_name(entry.name + ".refused.json")
    if (entry / "verified.json").is_file():
        return (*from_entry(), {**info, "hit": True})
    if refused.is_file():  # a refused copy is not retried: load the GGUF without queueing on the lock
        return (*from_gguf(), {**info, "hit": False, "refused": json.loads(refused.read_text())["why"]})
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry.with_name(entry.name + ".lock"))):
        if (entry / "verified.json").is_file():  # another worker built it while this one waited
            return (*from_entry(), {**info, "hit": True})
        if refused.is_file():  # another worker refused it while this one waited
            return (*from_gguf(), {**info, "hit": False, "refused": json.loads(refused.read_text())["why"]})
        lm, tok = from_gguf()
        t0 = time.perf_counter()
        tmp = entry.with_name(f"{entry.name}.{os.getpid()}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _detach_quantizer(lm)
            lm.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            copy = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype, attn_implementation=attn,
                                                        use_safetensors=True, trust_remote_code=remote)
            copy_tok = AutoTokenizer.from_pretrained(tmp, trust_remote_code=remote)
            diff = differences(lm, copy, tok, copy_tok)
        except Exception as e:  # a model this transformers cannot save or reload: keep using the GGUF
            diff = [f"{type(e).__name__}: {e}".splitlines()[0][:300]]
        if diff:
            refused.write_text(json.dumps({"why": diff[:10], "gguf": str(gguf), "sha256": sha}))
            shutil.rmtree(tmp, ignore_errors=True)
            return lm, tok, {**info, "hit": False, "refused": diff[:10]}
        (tmp / "verified.json").write_text(json.dumps({
            "gguf": str(gguf), "sha256": sha, "dtype": dtype_name, "transformers": transformers.__version__,
            "check": "every parameter and buffer bit-identical after reload; config and tokenizer equal",
            "tensors": len(dict(copy.named_parameters())) + len(dict(copy.named_buffers())),
            "build_s": time.perf_counter() - t0}, indent=1))
        shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
        return lm, tok, {**info, "hit": False, "built": True}
