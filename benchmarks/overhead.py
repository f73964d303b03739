#!/usr/bin/env python3
"""How much of an `evalharness gsm8k` run is spent inside transformers' `generate_batch`, and how much is harness.

Runs one small CPU evaluation through the real CLI (a fresh interpreter, as a user would start it), then reads the
engine runs it left in OUT/runs/*/result.json. For each run: the worker process's wall time, its model load, and the
time inside `generate_batch` (meta generate_s). The harness overhead is everything else: interpreter start and
imports, loading and rendering the task, starting workers, model loads, scoring, statistics, reports.

    python benchmarks/overhead.py                     # embedded default model (SmolLM2-135M GGUF), 4 rows, chat
    python benchmarks/overhead.py --tiny              # a tiny seeded Llama built on the fly (tests/conftest.py)
    python benchmarks/overhead.py --model DIR --limit 8 --graphs off,on,varlen,decode --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import LOCAL_DATA, tiny_llama  # noqa: E402  (benchmarks/ is on sys.path when run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="as evalharness --model (default: the embedded default model)")
    p.add_argument("--tiny", action="store_true", help="build and use the tests' tiny seeded Llama instead")
    p.add_argument("--data", default=str(LOCAL_DATA) if LOCAL_DATA.is_file() else None,
                   help="as evalharness --data (default: ../shared/data/gsm8k/test.jsonl when present)")
    p.add_argument("--limit", type=int, default=4)
    p.add_argument("--graphs", default="off,on")
    p.add_argument("--max-bt", default="384")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--prompt", default="chat")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--out", type=Path, help="report folder (default: a temporary one)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="evalharness-overhead-") as tmp:
        model = args.model
        if args.tiny:
            model = str(tiny_llama(Path(tmp) / "tiny-llama"))
        out = args.out or Path(tmp) / "report"
        cmd = [sys.executable, "-m", "evalharness", "gsm8k", "--limit", str(args.limit), "--graphs", args.graphs,
               "--max-bt", args.max_bt, "--max-new-tokens", str(args.max_new_tokens), "--prompt", args.prompt,
               "--dtype", args.dtype, "--out", str(out), "--no-progress"]
        if model:
            cmd += ["--model", model]
        if args.data:
            cmd += ["--data", args.data]
        if args.prompt == "fewshot":
            cmd += ["--fewshot", "0"]
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        total = time.perf_counter() - t0
        if proc.returncode not in (0, 1):
            sys.stderr.write(proc.stdout + proc.stderr)
            return proc.returncode or 1
        results = [json.loads(f.read_text()) for f in sorted(out.glob("runs/*/result.json"))]
        if not results:
            sys.stderr.write(proc.stdout + proc.stderr[-4000:])
            print(f"evalharness exited {proc.returncode} and no engine run left a result", file=sys.stderr)
            return 1
        print(f"\n{'run':<14}{'status':<10}{'worker s':>10}{'load s':>9}{'generate s':>12}{'tokens':>8}  config")
        gen_sum = worker_sum = 0.0
        for r in results:
            meta = r["meta"]
            gen, load, wall = meta.get("generate_s") or 0.0, meta.get("load_s") or 0.0, meta.get("wall_s") or 0.0
            tokens = sum(len(s["token_ids"]) for s in r["samples"])
            gen_sum, worker_sum = gen_sum + gen, worker_sum + wall
            e = meta.get("engine", {})
            config = f"graphs={e.get('cuda_graph')} padded={e.get('force_padding')} fault={e.get('fault')}"
            print(f"{r['key']:<14}{r['status']:<10}{wall:>10.1f}{load:>9.1f}{gen:>12.1f}{tokens:>8}  {config}")
        print(f"\ntotal harness wall time      {total:8.1f} s")
        print(f"inside generate_batch (sum)  {gen_sum:8.1f} s  ({100 * gen_sum / total:.1f} %)")
        print(f"worker processes (sum)       {worker_sum:8.1f} s  (of which outside generate_batch: "
              f"{worker_sum - gen_sum:.1f} s: interpreter, imports, model load)")
        print(f"harness outside the workers  {total - worker_sum:8.1f} s  (CLI start, task, scoring, reports)")
        print(f"overhead vs generate_batch   {total - gen_sum:8.1f} s  ({100 * (total - gen_sum) / total:.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
