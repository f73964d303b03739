#!/usr/bin/env python3
"""Wall time of a max_batch_tokens sweep with --jobs 1 vs --jobs 2 (engine runs side by side).

Runs the same sweep through the real CLI twice, each into a fresh folder (no shared cache), and reports wall time,
job count, and what each job spent on starting its worker (interpreter, imports, model load) vs generating.

Workers are reused across the jobs of one patch set (one model load per worker, plus one per crash retry; see the
README's "Workers"): the load figure below is what the jobs paid, zero for every job after a worker's first.

    python benchmarks/sweep.py --tiny                           # tiny seeded Llama built on the fly
    python benchmarks/sweep.py --model DIR --max-bt 128:512:128 --graphs off,on --limit 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import LOCAL_DATA, tiny_llama  # noqa: E402  (benchmarks/ is on sys.path when run)


def sweep(base: list[str], out: Path, jobs: int) -> dict:
    cmd = base + ["--out", str(out), "--jobs", str(jobs)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        sys.stderr.write(proc.stdout + proc.stderr[-4000:])
        raise SystemExit(f"evalharness exited {proc.returncode}")
    metas = [json.loads(f.read_text())["meta"] for f in sorted(out.glob("runs/*/result.json"))]
    worker = sum(m.get("wall_s") or 0.0 for m in metas)
    gen = sum(m.get("generate_s") or 0.0 for m in metas)
    load = sum(m.get("load_s") or 0.0 for m in metas)
    return {"jobs": jobs, "wall": wall, "n_jobs": len(metas), "loads": sum(m.get("attempts", 1) for m in metas),
            "worker": worker, "generate": gen, "load": load}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="as evalharness --model (default: the embedded default model)")
    p.add_argument("--tiny", action="store_true", help="build and use the tests' tiny seeded Llama instead")
    p.add_argument("--data", default=str(LOCAL_DATA) if LOCAL_DATA.is_file() else None)
    p.add_argument("--limit", type=int, default=4)
    p.add_argument("--graphs", default="off,on")
    p.add_argument("--max-bt", default="32,64,96")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--workers", type=int, default=2, help="the parallel run's --jobs (default 2)")
    args = p.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // args.workers)))
    with tempfile.TemporaryDirectory(prefix="evalharness-sweep-") as tmp:
        model = str(tiny_llama(Path(tmp) / "tiny-llama")) if args.tiny else args.model
        base = [sys.executable, "-m", "evalharness", "gsm8k", "--limit", str(args.limit), "--graphs", args.graphs,
                "--max-bt", args.max_bt, "--max-new-tokens", str(args.max_new_tokens), "--dtype", args.dtype,
                "--fewshot", "0", "--no-progress"]
        if model:
            base += ["--model", model]
        if args.data:
            base += ["--data", args.data]
        print("$", " ".join(base), "--jobs N", flush=True)
        rows = [sweep(base, Path(tmp) / f"jobs{n}", n) for n in (1, args.workers)]

    print(f"\n{'--jobs':>6} {'wall s':>8} {'jobs':>5} {'model loads':>12} {'worker s (sum)':>15} "
          f"{'of which start+load':>20} {'generate s (sum)':>17}")
    for r in rows:
        print(f"{r['jobs']:>6} {r['wall']:>8.1f} {r['n_jobs']:>5} {r['loads']:>12} {r['worker']:>15.1f} "
              f"{r['worker'] - r['generate']:>20.1f} {r['generate']:>17.1f}")
    one, many = rows
    print(f"\nspeed-up with --jobs {many['jobs']}: {one['wall'] / many['wall']:.2f}x (OMP_NUM_THREADS="
          f"{os.environ['OMP_NUM_THREADS']} per worker, {os.cpu_count()} CPUs)")
    print("workers are not reused across jobs: each job starts its own worker process and loads the model "
          f"itself ({one['loads']} model loads for {one['n_jobs']} jobs; model load alone "
          f"{one['load'] / max(one['n_jobs'], 1):.1f} s per job, worker start-up incl. imports and load "
          f"{(one['worker'] - one['generate']) / max(one['n_jobs'], 1):.1f} s per job). Reusing a worker for several "
          "jobs could save at most the 'start+load' column; it is not implemented (a crash would have to be "
          "isolated per job inside a shared worker).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
