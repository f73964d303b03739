#!/usr/bin/env python3
"""What `--audit` costs: the same graph-mode workload with and without it, one after the other.

Runs `evalharness gsm8k --graphs off,MODE` twice through the real CLI (a fresh interpreter each time, nothing shared:
separate run caches), then reads the graph run's worker meta (OUT/runs/*/result.json) and prints the time inside
`generate_batch` with and without the audit, the slowdown, and how many replays the audit re-ran eagerly. The audit
only acts on CUDA-graph replays, so on a CPU both runs are the same (no graph is ever captured) and this prints a
ratio near 1. Extra arguments go to both evalharness runs unchanged:

    python benchmarks/audit_overhead.py -- --model DIR --gguf-file F --data test.jsonl --limit 200 \
        --prompt fewshot --fewshot 8 --attn torch-flash --dtype bf16 --max-bt 384
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import LOCAL_DATA  # noqa: E402  (benchmarks/ is on sys.path when run)


def graph_run(out: Path, mode: str) -> dict | None:
    """The result.json of the graph run for `mode` under OUT/runs; without CUDA the harness runs only its padded-eager
    twin (the graph run would be the same configuration), so that one stands in."""
    from evalharness.config import MODES

    runs = [json.loads(f.read_text()) for f in sorted(out.glob("runs/*/result.json"))]
    for r in runs:
        if tuple(r["meta"].get("engine", {}).get("cuda_graph") or ()) == MODES[mode]:
            return r
    return next((r for r in runs if r["meta"].get("engine", {}).get("force_padding")), None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="varlen", choices=["on", "varlen", "decode"])
    p.add_argument("--keep", type=Path, help="keep both report folders under this folder")
    p.add_argument("evalharness_args", nargs="*", help="after --: arguments for evalharness gsm8k")
    args = p.parse_args(argv)
    extra = list(args.evalharness_args)
    if "--data" not in extra and LOCAL_DATA.is_file():
        extra += ["--data", str(LOCAL_DATA)]

    with tempfile.TemporaryDirectory(prefix="evalharness-audit-") as tmp:
        base = args.keep or Path(tmp)
        rows = []
        for label, flags in (("plain", []), ("audit", ["--audit"])):
            out = base / label
            cmd = [sys.executable, "-m", "evalharness", "gsm8k", "--graphs", f"off,{args.mode}", "--out", str(out),
                   "--no-progress", *flags, *extra]
            print("$", " ".join(cmd), flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            total = time.perf_counter() - t0
            r = graph_run(out, args.mode)
            if proc.returncode not in (0, 1) or r is None:
                sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
                print(f"evalharness exited {proc.returncode}; no {args.mode} graph run left a result", file=sys.stderr)
                return proc.returncode or 1
            audit = r["meta"].get("audit") or {}
            rows.append((label, total, r["meta"].get("generate_s") or 0.0, audit))
        print(f"\n{'run':<8}{'CLI s':>8}{'generate s':>12}  audit")
        for label, total, gen, audit in rows:
            summary = {k: audit[k] for k in ("captures", "replays_audited", "mismatching_replays") if k in audit}
            print(f"{label:<8}{total:>8.1f}{gen:>12.1f}  {summary or '-'}")
        plain, audited = rows[0][2], rows[1][2]
        if plain > 0:
            print(f"\n--audit slows generate_batch by {audited / plain:.2f}x ({audited - plain:+.1f} s) on this workload")
    return 0


if __name__ == "__main__":
    sys.exit(main())
