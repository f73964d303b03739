"""The numbers `--jobs auto` needs, read from the model files and the machine (schedule.py decides with them).

- Model geometry without loading the model: parameter count (safetensors headers, or GGUF tensor infos), layers,
  KV heads, head dim and vocabulary (config.json, or the GGUF metadata).
- The KV cache a worker allocates is sized from the workload (engine/transformers_cb.py workload_blocks); here the
  prompts are text, so tokens are over-estimated at one per 3 bytes.
- Free GPU memory from `nvidia-smi` (the parent never creates a CUDA context), cores from the affinity mask.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .schedule import kv_cache_bytes, worker_bytes

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "auto": 4}


@dataclass(frozen=True)
class Geometry:
    n_params: int
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int


def _safetensors_params(folder: Path) -> int:
    total = 0
    for f in folder.glob("*.safetensors"):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, t in header.items():
            if name != "__metadata__":
                count = 1
                for d in t["shape"]:
                    count *= d
                total += count
    return total


def _from_config(cfg: dict, n_params: int) -> Geometry:
    cfg = cfg.get("text_config") or cfg
    heads = cfg.get("num_attention_heads") or 1
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return Geometry(n_params, cfg["num_hidden_layers"], cfg.get("num_key_value_heads") or heads, head_dim,
                    cfg.get("vocab_size") or 0)


def _from_gguf(path: Path) -> Geometry:
    """From the GGUF's header alone (gguf_header: well under a second where gguf.GGUFReader takes 22-44 s on Gemma 3's
    262k-token vocabulary on 2 CPU cores)."""
    from .gguf_header import read_header

    h = read_header(path)
    fields = h.fields
    arch = fields["general.architecture"]
    heads = int(fields.get(f"{arch}.attention.head_count") or 1)
    kv_heads = int(fields.get(f"{arch}.attention.head_count_kv") or heads)
    head_dim = fields.get(f"{arch}.attention.key_length")
    head_dim = int(head_dim) if head_dim else int(fields[f"{arch}.embedding_length"]) // heads
    vocab = len(fields.get("tokenizer.ggml.tokens") or ())
    n_params = sum(math.prod(shape) for _, shape in h.tensors)
    return Geometry(n_params, int(fields[f"{arch}.block_count"]), kv_heads, head_dim, vocab)


def geometry(model: dict) -> Geometry | None:
    """From a worker's model spec; None for a hub id or anything unreadable (the budget then ignores memory)."""
    try:
        folder = Path(model["path"])
        if model.get("gguf_file"):
            return _from_gguf(folder / model["gguf_file"])
        if (folder / "config.json").is_file():
            return _from_config(json.loads((folder / "config.json").read_text()), _safetensors_params(folder))
    except (OSError, KeyError, ValueError, TypeError, ImportError, struct.error):
        return None
    return None


def per_worker_bytes(model: dict, prompts: list[str], max_new_tokens: int, max_bt: int,
                     block_size: int = 256) -> int | None:
    from .engine.transformers_cb import blocks_for

    g = geometry(model)
    if g is None:
        return None
    dtype_bytes = DTYPE_BYTES.get(model.get("dtype", "auto"), 4)
    blocks = blocks_for([len(p.encode()) // 3 + 1 for p in prompts], max_new_tokens, block_size)
    kv = kv_cache_bytes(g.layers, g.kv_heads, g.head_dim, dtype_bytes, block_size, blocks)
    return worker_bytes(g.n_params, dtype_bytes, kv, max_bt, g.vocab)


def gpu_memory(devices: list[str] | None) -> list[tuple[int, int]] | None:
    """(free, total) bytes per GPU (the --devices entries, or every visible GPU), from nvidia-smi; None if unknown."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    cmd = [exe, "--query-gpu=index,memory.free,memory.total", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    mem = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            mem[parts[0]] = (int(parts[1]) * 2**20, int(parts[2]) * 2**20)
    if not mem:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    wanted = devices or ([d.strip() for d in visible.split(",") if d.strip()] if visible else list(mem))
    values = [mem[d] for d in wanted if d in mem]
    return values or None


# --- invocations sharing a machine ---------------------------------------------------------------------------------
# Each running pool leaves a claim (its pid, workers, GPU bytes) in a folder of the machine's temp dir; --jobs auto in
# another invocation counts the live claims, so that two verdicts started together split the cores and the GPU
# memory instead of each taking all of it. "Read the others' claims -> size -> write our own" runs under one
# machine-wide lock (claiming) in that folder, so that of two invocations started at the same instant the second sizes
# itself after the first's claim is written.

def claims_dir() -> Path:
    import tempfile

    return Path(os.environ.get("EVALHARNESS_CLAIMS", Path(tempfile.gettempdir()) / "evalharness-claims"))


@contextlib.contextmanager
def claiming():
    """Hold the machine-wide claims lock for the block (filelock: released when its holder dies, even by SIGKILL);
    without a writable claims folder, nothing is held, as the claims are then not written either."""
    from filelock import FileLock

    folder = claims_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(folder / ".lock"))
        lock.acquire()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def others() -> tuple[int, int]:
    """(workers, GPU bytes) claimed by other live invocations on this machine; stale claims are removed."""
    workers = gpu = 0
    folder = claims_dir()
    for f in folder.glob("*.json") if folder.is_dir() else []:
        try:
            c = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if c.get("pid") == os.getpid():
            continue
        if not _alive(int(c.get("pid", 0))):
            f.unlink(missing_ok=True)
            continue
        workers += int(c.get("workers", 0))
        gpu += int(c.get("gpu_bytes", 0))
    return workers, gpu


class Claim:
    """This invocation's claim while its pool runs (a context manager)."""

    def __init__(self, workers: int, gpu_bytes: int = 0):
        self.path = claims_dir() / f"{os.getpid()}.json"
        self.body = {"pid": os.getpid(), "workers": workers, "gpu_bytes": gpu_bytes}

    def __enter__(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.body))
        except OSError:
            pass
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
        return False


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
