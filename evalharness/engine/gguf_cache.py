"""A dequantized safetensors copy of a GGUF model, cached per (file SHA-256, dtype, transformers version), so that
every worker after the first loads plain safetensors instead of dequantizing the GGUF and converting its tokenizer
again (Qwen2.5-0.5B: 65-79 s per worker on the H200; Gemma 3's 262k-token vocabulary makes the conversion slow).

Built once: the model is loaded from the GGUF with `GgufConfig(dequantize=True)` where this transformers has it
(every weight unpacked to the requested dtype), the GGUF quantizer is detached (`save_pretrained` refuses while it is
attached: a dequantized model has nothing left to quantize), the model and its tokenizer are saved, and the copy is
loaded back and compared with what the GGUF load gave: every parameter and buffer bit for bit (same names, dtypes,
shapes and bytes), the model configuration, and the tokenizer (class, serialized `tokenizers` backend, special
tokens and flags, the ids and decoded text of probe texts with and without special tokens, the chat template and
what it renders). Only then is the entry published (`verified.json`). A copy that differs is refused
(`*.refused.json` records why) and that model keeps loading from its GGUF.

Tokenizer: a saved tokenizer does not always reload as the same tokenizer. transformers 5.17 converts Gemma's GGUF
vocabulary into a `Unigram` backend inside a `GemmaTokenizer`, whose `__init__` rebuilds a `BPE` backend from
tokenizer.json's vocabulary (no merges): reloaded, it splits "Question" into single characters. So two ways of
loading the saved tokenizer are tried, the first that reloads identically is recorded in `verified.json` and used on
every hit: `saved` (plain `AutoTokenizer.from_pretrained`) and `backend` (the same class, given tokenizer.json
verbatim as its `tokenizer_object`). transformers 5 saves no `add_bos_token`/`add_eos_token` next to a
tokenizer.json (the post-processor adds BOS), so 5.24's reloaded GemmaTokenizer read add_bos_token False: the flags
are recorded in `verified.json` and set back through their setters, and the rebuilt post-processor is compared too.

Locking: the lock covers only deciding and building. A worker that finds the entry verified or refused (before or
after waiting for the builder) releases the lock first and then loads, so workers load in parallel; only the builder
loads under the lock (building needs its GGUF load). An entry is renamed into place with its `verified.json` already
inside, so a half-written entry is never read; the lock and a re-check after acquiring it keep two workers from
building the same entry. `FORMAT` is part of the entry's name: entries and refusals made by an older check are not
used. `EVALHARNESS_GGUF_CACHE=0` turns the cache off.

Measured on 2 shared CPU cores, bf16, each load in a fresh process (`load_s` of `python benchmarks/gguf_cache_load.py
--model DIR --gguf-file F --workers 2`, which includes the ~4.6 s of transformers imports the load triggers):
Gemma 3 270M Q4_K_M: GGUF 132 s, hit 9.5 s (5.24; tokenizer `saved`); GGUF 117 s, hit 14.5 s (5.17; `backend`).
SmolLM2-135M Q4_1: GGUF 36 s, hit 7.4 s (5.24); GGUF 40 s, hit 8.1 s (5.17). The worker that waited for the builder
(121-142 s on Gemma) then loaded from the entry in 19-29 s; after imports a hit is 0.6 s (SmolLM2) and 3.3 s (Gemma:
3.1 s of it its 262k-token tokenizer).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from filelock import FileLock

from ..results import atomic_write_json

FORMAT = 2  # bump when what an entry holds or how it is checked changes: older entries and refusals are not used
PROBE = "Question: Natalia sold clips to 48 of her friends in April. Answer: 48 / 2 = <<48/2=24>>24 é ü 日本 \n\t#### 72"
# whitespace runs, blank lines, CRLF, a leading space, empty text (BOS alone), rare characters and byte fallback
PROBES = (PROBE, "  two leading spaces,   runs   of spaces,\n\n\nblank lines\r\nand a tab\t\tend   ", " x", "",
          "🙂 naïve café ﬁ Ω≈ç√ \u200b\u00a0 1,234.5e-6 ```def f():\n    return 0```")
CHAT = [{"role": "user", "content": PROBE}]
TOKENIZER_LOADERS = ("saved", "backend")
FLAGS = ("add_bos_token", "add_eos_token")
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
        atomic_write_json(memo, known)
    return known[key]


def entry_dir(sha: str, dtype: str, transformers_version: str) -> Path:
    return root() / f"{sha[:16]}-{dtype}-tf{transformers_version}-v{FORMAT}"


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


def model_differences(a, b) -> list[str]:
    """Where two loaded models differ (every parameter and buffer as bytes, the configuration); empty when equal."""
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
    return out


def _outcome(fn, *args, **kwargs):
    """What a call gives, or the error it raises (so that two tokenizers failing alike compare equal)."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - the error is the behaviour being compared
        return f"{type(e).__name__}: {e}"


def _ids(tok, text: str, special: bool):
    return tok(text, add_special_tokens=special)["input_ids"]


def _backend(tok) -> dict | None:
    backend = getattr(tok, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else None


def _added(tok) -> dict:
    return {i: (str(t), getattr(t, "special", None), getattr(t, "lstrip", None), getattr(t, "rstrip", None),
                getattr(t, "normalized", None), getattr(t, "single_word", None))
            for i, t in (getattr(tok, "added_tokens_decoder", None) or {}).items()}


def tokenizer_differences(tok_a, tok_b) -> list[str]:
    """Where two tokenizers behave differently: class, serialized backend, vocabulary, special tokens and flags,
    probe texts encoded (with and without special tokens) and decoded, the chat template and what it renders."""
    out = []
    if type(tok_a).__name__ != type(tok_b).__name__:
        out.append(f"tokenizer class: {type(tok_a).__name__} vs {type(tok_b).__name__}")
    ba, bb = _backend(tok_a), _backend(tok_b)
    if ba != bb:
        keys = sorted(k for k in set(ba or {}) | set(bb or {}) if (ba or {}).get(k) != (bb or {}).get(k))
        out.append(f"tokenizer backends differ: {', '.join(keys) or 'one has none'}")
    if tok_a.get_vocab() != tok_b.get_vocab():
        out.append("tokenizer vocabularies differ")
    if _added(tok_a) != _added(tok_b):
        out.append("tokenizer added tokens differ")
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "all_special_ids", "add_bos_token",
                 "add_eos_token", "padding_side", "truncation_side", "model_max_length",
                 "clean_up_tokenization_spaces"):
        va, vb = getattr(tok_a, attr, None), getattr(tok_b, attr, None)
        if va != vb:
            out.append(f"tokenizer {attr}: {va!r} vs {vb!r}")
    texts = (*PROBES, " ".join(tok_a.all_special_tokens) + " x " + " ".join(tok_b.all_special_tokens))
    for n, text in enumerate(texts):
        for special in (True, False):
            ids = _outcome(_ids, tok_a, text, special)
            if ids != _outcome(_ids, tok_b, text, special):
                out.append(f"tokenizer encodes probe {n} differently (add_special_tokens={special})")
            elif isinstance(ids, list):
                for skip in (True, False):
                    if _outcome(tok_a.decode, ids, skip_special_tokens=skip) != _outcome(tok_b.decode, ids,
                                                                                         skip_special_tokens=skip):
                        out.append(f"tokenizer decodes probe {n} differently (skip_special_tokens={skip})")
    if getattr(tok_a, "chat_template", None) != getattr(tok_b, "chat_template", None):
        out.append("chat templates differ")
    elif getattr(tok_a, "chat_template", None):
        for tokenize in (False, True):
            ra = _outcome(tok_a.apply_chat_template, CHAT, add_generation_prompt=True, tokenize=tokenize)
            rb = _outcome(tok_b.apply_chat_template, CHAT, add_generation_prompt=True, tokenize=tokenize)
            if repr(ra) != repr(rb):
                out.append(f"chat template renders differently (tokenize={tokenize})")
    return out


def differences(a, b, tok_a, tok_b) -> list[str]:
    """Where two loaded models (and tokenizers) differ; empty when the copy is exact."""
    return model_differences(a, b) + tokenizer_differences(tok_a, tok_b)


def tokenizer_flags(tok) -> dict:
    """The BOS/EOS flags a tokenizer reports (transformers 5 does not save them next to a tokenizer.json)."""
    return {k: getattr(tok, k) for k in FLAGS if isinstance(getattr(tok, k, None), bool)}


def load_tokenizer(folder: Path, how: str, flags: dict | None = None, remote: bool = False):
    """A saved tokenizer, loaded `saved` (as from_pretrained reads the folder) or `backend` (the same class, with
    tokenizer.json given verbatim as its backend, for classes whose __init__ would rebuild a different one); then
    the recorded BOS/EOS flags are set where they read differently (their setters rebuild the post-processor, which
    the verification compares)."""
    from transformers import AutoTokenizer

    if how == "backend":
        from tokenizers import Tokenizer

        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote,
                                            tokenizer_object=Tokenizer.from_file(str(Path(folder) / "tokenizer.json")))
    else:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)
    for name, value in (flags or {}).items():
        if getattr(tok, name, None) != value:
            setattr(tok, name, value)
    return tok


def from_gguf(model: dict, attn: str, dtype):
    """(model, tokenizer) from the GGUF file itself: dequantize, and convert the GGUF vocabulary (slow for Gemma)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    remote = bool(model.get("trust_remote_code"))
    tok = AutoTokenizer.from_pretrained(model["path"], gguf_file=model["gguf_file"], trust_remote_code=remote)
    lm = AutoModelForCausalLM.from_pretrained(model["path"], dtype=dtype, attn_implementation=attn,
                                              **_gguf_kwargs(model))
    return lm, tok


def from_entry(entry: Path, model: dict, attn: str, dtype):
    """(model, tokenizer) from a verified entry, the tokenizer loaded the way its verification recorded."""
    from transformers import AutoModelForCausalLM

    remote = bool(model.get("trust_remote_code"))
    verified = json.loads((entry / "verified.json").read_text())
    tok = load_tokenizer(entry, verified["tokenizer"], verified["tokenizer_flags"], remote)
    lm = AutoModelForCausalLM.from_pretrained(entry, dtype=dtype, attn_implementation=attn, use_safetensors=True,
                                              trust_remote_code=remote)
    return lm, tok


def build(model: dict, attn: str, dtype, dtype_name: str, gguf: Path, sha: str, entry: Path):
    """Load the GGUF, save the copy, verify it and publish it (or record the refusal); the caller holds the lock.
    Gives (model, tokenizer, info) from the GGUF load."""
    import transformers
    from transformers import AutoModelForCausalLM

    remote = bool(model.get("trust_remote_code"))
    lm, tok = from_gguf(model, attn, dtype)
    t0 = time.perf_counter()
    tmp = entry.with_name(f"{entry.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    how = None
    try:
        _detach_quantizer(lm)
        lm.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        flags = tokenizer_flags(tok)
        copy = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype, attn_implementation=attn, use_safetensors=True,
                                                    trust_remote_code=remote)
        diff = model_differences(lm, copy)
        tried = []
        for way in TOKENIZER_LOADERS if not diff else ():
            if way == "backend" and not (tmp / "tokenizer.json").is_file():
                continue
            try:
                found = tokenizer_differences(tok, load_tokenizer(tmp, way, flags, remote))
            except Exception as e:  # a loader this tokenizer does not support
                found = [f"{type(e).__name__}: {e}".splitlines()[0][:200]]
            if not found:
                how = way
                break
            tried.append(f"tokenizer loaded {way}: {'; '.join(found[:4])}")
        if how is None and not diff:
            diff = tried
    except Exception as e:  # a model this transformers cannot save or reload: keep using the GGUF
        diff = [f"{type(e).__name__}: {e}".splitlines()[0][:300]]
    info = {"entry": str(entry), "hit": False}
    if diff:
        # written whole, then renamed: a worker reads it without the lock
        atomic_write_json(refused_file(entry), {"why": diff[:10], "gguf": str(gguf), "sha256": sha})
        shutil.rmtree(tmp, ignore_errors=True)
        return lm, tok, {**info, "refused": diff[:10]}
    (tmp / "verified.json").write_text(json.dumps({
        "gguf": str(gguf), "sha256": sha, "dtype": dtype_name, "transformers": transformers.__version__,
        "format": FORMAT, "tokenizer": how, "tokenizer_flags": flags,
        "check": "every parameter and buffer bit-identical after reload; config equal; tokenizer class, backend, "
                 "special tokens, flags, probe encodings and decodings, chat template equal",
        "tensors": len(dict(copy.named_parameters())) + len(dict(copy.named_buffers())),
        "build_s": time.perf_counter() - t0}, indent=1))
    shutil.rmtree(entry, ignore_errors=True)
    os.replace(tmp, entry)
    return lm, tok, {**info, "built": True, "tokenizer": how}


def refused_file(entry: Path) -> Path:
    return entry.with_name(entry.name + ".refused.json")


def _state(entry: Path) -> str | None:
    if (entry / "verified.json").is_file():
        return "verified"
    if refused_file(entry).is_file():
        return "refused"
    return None


def load(model: dict, attn: str, dtype, dtype_name: str):
    """(model, tokenizer, info) for a GGUF model spec, through the cache; on the CPU (the caller moves it)."""
    import transformers

    gguf = Path(model["path"]) / model["gguf_file"]
    sha = file_sha256(gguf)
    entry = entry_dir(sha, dtype_name, transformers.__version__)
    state, waited = _state(entry), 0.0
    if state is None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with FileLock(str(entry.with_name(entry.name + ".lock"))):
            waited = round(time.perf_counter() - t0, 2)
            state = _state(entry)  # another worker may have built or refused it while this one waited
            if state is None:
                lm, tok, info = build(model, attn, dtype, dtype_name, gguf, sha, entry)
                return lm, tok, {**info, "waited_s": waited}
    # decided; the lock is released, so that workers load side by side
    info = {"entry": str(entry), "waited_s": waited}
    if state == "verified":
        return (*from_entry(entry, model, attn, dtype), {**info, "hit": True})
    why = json.loads(refused_file(entry).read_text())["why"]  # a refused copy is not retried: load the GGUF
    return (*from_gguf(model, attn, dtype), {**info, "hit": False, "refused": why})
