#!/usr/bin/env python3
"""GGUF model loads with and without the dequantized cache (evalharness/engine/gguf_cache.py), each in a fresh
worker-like process (`transformers_cb.load_model`, the workers' own loader), into an empty cache folder:

1. `gguf`: EVALHARNESS_GGUF_CACHE=0, the model and tokenizer straight from the GGUF;
2. `workers`: N processes started together on the empty cache: one builds the entry (load, save, verify, publish),
   the others wait for that decision and then load side by side (from the entry, or from the GGUF if refused);
3. `hit`: one more process, the cache now decided.

Prints one JSON object: {"model", "transformers", "gguf": {load_s}, "workers": [{load_s, info}], "hit": {load_s,
info}, "command"}; `load_s` is the time inside load_model (the interpreter and torch import excluded). Target: every
worker's load_s after the builder's is about `hit`'s, not a multiple of it (workers do not load one after another).

    python benchmarks/gguf_cache_load.py --model gemma3-270m --workers 6
    python benchmarks/gguf_cache_load.py --model /tmp/smol --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import REPO, load_model_cmd

def start(args, cache: Path, use_cache: bool = True) -> subprocess.Popen:
    env = {**os.environ, "EVALHARNESS_CACHE": str(cache), "EVALHARNESS_GGUF_CACHE": "1" if use_cache else "0",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    return subprocess.Popen(load_model_cmd(sys.executable, args.model, args.gguf_file, args.dtype), env=env,
                            stdout=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"gguf_cache_load: a loader process failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="an embedded model name or a folder")
    ap.add_argument("--gguf-file", help="the GGUF file inside --model's folder")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--workers", type=int, default=2, help="processes started together on the empty cache")
    ap.add_argument("--skip-gguf", action="store_true", help="leave out the cache-off load")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    import transformers

    from evalharness import models

    spec = models.resolve(args.model, args.gguf_file, args.dtype)
    if not spec.get("gguf_file"):
        sys.exit("gguf_cache_load: error: not a GGUF model (pass --gguf-file)")
    with tempfile.TemporaryDirectory(prefix="gguf-cache-bench-") as tmp:
        result = {"model": spec["label"], "dtype": args.dtype, "transformers": transformers.__version__}
        if not args.skip_gguf:
            result["gguf"] = finish(start(args, Path(tmp), use_cache=False))
        procs = [start(args, Path(tmp)) for _ in range(args.workers)]
        result["workers"] = [finish(p) for p in procs]
        result["hit"] = finish(start(args, Path(tmp)))
    result["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
