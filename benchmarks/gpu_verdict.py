#!/usr/bin/env python3
"""One full 4-mode verdict at GPU speed, timed: writes verdict-speed.json.

0. The model, prepared once as a nightly job's persisting cache has it: for a GGUF model (and the dequantized cache
   on, EVALHARNESS_GGUF_CACHE), one load in a worker-like process (`transformers_cb.load_model`, with the
   verdict's interpreter, dtype and EVALHARNESS_CACHE), which builds the dequantized cache entry if it is missing
   (Gemma 3 270M: ~77 s on the H200 host, mostly the GGUF tokenizer's conversion). `cache_build_s`: that load's
   seconds; `cold_cache`: whether it built the entry (true) or found it (false); null for a model without the cache.
   So `wall_s` below is the steady state, and the cold cost stays visible beside it.
1. The verdict: `evalharness gsm8k --graphs off,on,varlen,decode` into a fresh folder (no cached run), with the
   pool's defaults (--jobs auto on CUDA) unless --jobs is given. Wall time of the whole invocation. A model that
   the engine gives no decode fast path (sliding-window layers: Gemma 3) gets no `decode` jobs (SKIPPED at plan
   time, plan.unsupported_modes): 4 jobs, not 6.
2. Its slowest run again alone, in a fresh folder: `evalharness plan` with the same settings, then `evalharness
   run-job` of that run (its own worker: interpreter start, model load, generation); with --solo-repeat N, N times,
   `slowest_solo_s` their median and `solo_runs_s` each. Target: 1. <= 1.3 x 2.
   The verdicts' workers share the GPU through an MPS daemon of their invocation's own, as the harness does by
   default (--mps auto; `--mps` insists, `--mps off` passes --no-mps); the solo run has one worker and no daemon
   (alone, it shares the GPU with nobody). `mps` in the JSON: the setting (older recordings: true or false).
3. With --concurrent: two invocations of the same verdict started together, each into its own folder; each one's
   wall against 1. Target: each <= 1.5 x 1.
4. `--step pairs --rounds N`: N rounds of a verdict (1.) followed at once by its slowest run alone (2.), so that
   each ratio compares two runs minutes apart on the same host. A shared host's speed drifts: the same job alone
   generated in 53-109 s across the recorded leases (reports/h200-speed/README.md), so a ratio of a verdict and a
   solo run from different moments says more about the drift than about the harness. `pairs`: each round's
   {"verdict", "wall_s", "solo_s", "ratio", ...}, and `pair_ratios` ({"median", "min", "max"}).

verdict-speed.json: wall_s, slowest_solo_s, ratio, jobs, workers, threads_per_worker, model_loads, timeouts, runs
(each {"run", "wall_s", "load_s", "generate_s", "worker", "attempts", "status"}, and "timings" where the worker
reported them: worker_start_s, imports_s, setup_s, finish_s), budget (the pool's one line), gguf_cache (what the
workers reported), phases (the invocation's prepare_s / jobs_s / confirm_s), planning (prepare_s by step), mps,
cache_build_s, cold_cache, prepare (the preparing load's report), command, device; with --concurrent also concurrent
({"walls", "ratios"}); with --step pairs also pairs and pair_ratios (4.), the first round's verdict giving the keys
of 1.

    python benchmarks/gpu_verdict.py --model /tmp/models --gguf-file gemma-3-270m-q4_k_m.gguf \\
        --data /tmp/data/test.jsonl --attn torch-flash --out reports/h200-speed/gemma3-270m [--concurrent]
    # or in parts that each fit a 10-minute slot: --step verdict, then --step solo, then --step concurrent
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

MODES = "off,on,varlen,decode"


def evalharness(python: str) -> list[str]:
    return [python, "-m", "evalharness"]


def run(cmd: list[str], log: Path) -> tuple[int, float]:
    """Run a command, its output to `log`; (exit status, wall seconds)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    return proc.returncode, time.perf_counter() - t0


def settings_args(a) -> list[str]:
    out = ["--model", a.model, "--graphs", MODES, "--max-bt", str(a.max_bt), "--max-new-tokens",
           str(a.max_new_tokens), "--attn", a.attn, "--dtype", a.dtype, "--prompt", a.prompt]
    for flag, value in (("--gguf-file", a.gguf_file), ("--data", a.data), ("--limit", a.limit),
                        ("--fewshot", a.fewshot), ("--oracle", a.oracle)):
        if value is not None:
            out += [flag, str(value)]
    return out


def prepare(a, log: Path) -> dict:
    """Step 0: one worker-like load of the model, which leaves the dequantized GGUF cache entry built. Returns
    {"cache_build_s", "cold_cache", "prepare"} (both null where the model has no such cache)."""
    from _common import load_model_cmd  # benchmarks/ is on sys.path when run

    cmd = load_model_cmd(a.python, a.model, a.gguf_file, a.dtype, only_cached=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"preparing the model exited {proc.returncode}: see {log}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if "load_s" not in report:
        return {"cache_build_s": None, "cold_cache": None, "prepare": report}
    return {"cache_build_s": report["load_s"], "cold_cache": bool(report["info"].get("built")), "prepare": report}


def verdict(a, out: Path) -> tuple[list[str], int, float]:
    cmd = evalharness(a.python) + ["gsm8k", *settings_args(a), "--out", str(out), "--no-progress"]
    if a.jobs:
        cmd += ["--jobs", a.jobs]
    cmd += {"on": ["--mps"], "off": ["--no-mps"], "auto": []}[a.mps]
    out.mkdir(parents=True, exist_ok=True)
    rc, wall = run(cmd, out.parent / f"{out.name}.log")
    if rc not in (0, 1):
        tail = (out.parent / f"{out.name}.log").read_text()[-3000:]
        raise SystemExit(f"verdict exited {rc}:\n{tail}")
    return cmd, rc, wall


def timed_verdict(a, folder: Path, prepared: dict) -> dict:
    """1.: one verdict into the fresh `folder`, timed: the keys of verdict-speed.json that describe it."""
    cmd, rc, wall = verdict(a, folder)
    summary = json.loads((folder / "summary.json").read_text())
    rows = runs_of(summary)
    slowest = max(rows, key=lambda r: r["wall_s"] or 0.0)
    pool = summary.get("pool") or {}
    log = (folder.parent / f"{folder.name}.log").read_text()
    return {
        "wall_s": wall, "slowest_solo_s": None, "ratio": None,
        "target": "wall_s <= 1.3 x slowest_solo_s, timeouts 0, model_loads <= workers",
        "slowest_run": slowest["run"], "slowest_key": slowest["key"], "slowest_job_wall_s": slowest["wall_s"],
        "jobs": len(rows), "workers": pool.get("workers"), "threads_per_worker": pool.get("threads_per_worker"),
        "worker_processes": len(pool.get("processes") or []), "model_loads": pool.get("model_loads"),
        "timeouts": sum(r["status"] == "timeout" for r in rows), "runs": rows,
        "budget": next((line for line in log.splitlines() if " worker(s) x " in line), None),
        "verdicts": {m: c["verdict"] for m, c in summary["modes"].items()}, "exit_code": rc,
        "gguf_cache": sorted({json.dumps(json.loads((d / "result.json").read_text())["meta"].get("worker", {})
                                         .get("gguf_cache")) for d in (folder / "runs").iterdir()
                              if (d / "result.json").exists()}),
        "status_lines": sum(1 for line in log.splitlines() if line.startswith("evalharness: status:")),
        "phases": pool.get("phases"),  # the invocation's prepare / jobs / confirmation seconds
        "planning": pool.get("prepare"),  # prepare_s by step: task_s, cuda_s, probes_s, plan_s (newer summaries)
        "mps": a.mps,
        **prepared,
        "command": shlex.join(cmd), "benchmark": shlex.join([sys.executable, *sys.argv]), "device": device(),
    }


def runs_of(summary: dict) -> list[dict]:
    rows = []
    for key, r in summary["runs"].items():
        rows.append({"run": f"{key} [{', '.join(r['served'])}] {r['config']}", "key": key,
                     "wall_s": r.get("job_wall_s"), "load_s": r.get("load_s"), "generate_s": r.get("generate_s"),
                     "worker": r.get("worker_pid"), "attempts": r.get("attempts"), "status": r["status"],
                     **({"timings": r["timings"]} if r.get("timings") else {})})
    return rows


def solo(a, key: str, folder: Path) -> float:
    """The run `key` of the same settings, alone: plan into `folder`, then run-job it."""
    plan = evalharness(a.python) + ["plan", *settings_args(a), "--out", str(folder)]
    rc, _ = run(plan, folder.parent / f"{folder.name}-plan.log")
    if rc != 0:
        raise SystemExit(f"plan exited {rc}: see {folder.parent / (folder.name + '-plan.log')}")
    doc = json.loads((folder / "jobs.json").read_text())
    entry = next(e for e in doc["jobs"] if e["run"] == key)
    rc, wall = run(evalharness(a.python) + ["run-job", str(folder), entry["id"], "--no-progress"],
                   folder.parent / f"{folder.name}-run.log")
    if rc != 0:
        raise SystemExit(f"run-job exited {rc}: see {folder.parent / (folder.name + '-run.log')}")
    return wall


def device() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        return out.splitlines()[0] if out else "cpu"
    except (OSError, subprocess.TimeoutExpired):
        return "cpu"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--gguf-file")
    p.add_argument("--data", help="GSM8K test JSONL (train.jsonl next to it gives the shots)")
    p.add_argument("--limit", type=int)
    p.add_argument("--fewshot", type=int)
    p.add_argument("--prompt", default="fewshot")
    p.add_argument("--max-bt", default="384")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--jobs", help="--jobs for the verdicts (default: the harness's own, auto on CUDA)")
    p.add_argument("--oracle", choices=("twin", "constants", "both"),
                   help="--oracle for the verdicts: time `constants` (no twins) against the default twin oracle")
    p.add_argument("--mps", nargs="?", const="on", default="auto", choices=("auto", "on", "off"),
                   help="the verdicts' MPS: auto (the harness's default: a daemon of each invocation's own where its "
                   "workers share the GPU), on (--mps), off (--no-mps); the solo run has one worker, so no daemon")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs evalharness")
    p.add_argument("--out", type=Path, default=Path("verdict-speed"), help="folder for the runs and the JSON")
    p.add_argument("--concurrent", action="store_true", help="also two invocations at once, each against solo")
    p.add_argument("--solo-repeat", type=int, default=1,
                   help="run the slowest run alone N times; slowest_solo_s is their median (on a shared H200 host the "
                   "same job alone generated in 53-109 s across the recorded leases: reports/h200-speed/README.md)")
    p.add_argument("--step", choices=("all", "verdict", "solo", "concurrent", "pairs"), default="all",
                   help="one part only (each fits a 10-minute slot): verdict writes verdict-speed.json, solo and "
                   "concurrent add to it (same --out and settings); pairs: --rounds verdicts, each followed by its "
                   "slowest run alone (writes verdict-speed.json)")
    p.add_argument("--rounds", type=int, default=3, help="--step pairs: how many (verdict, solo) rounds")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.solo_repeat < 1:
        p.error("--rounds and --solo-repeat must be >= 1")

    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "verdict-speed.json"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result = json.loads(path.read_text()) if a.step in ("solo", "concurrent") and path.exists() else {}
    if a.step in ("solo", "concurrent") and not result:
        raise SystemExit(f"{path}: run --step verdict first")
    if a.step == "pairs":
        prepared = prepare(a, a.out / f"prepare-{stamp}.log")  # not timed: a nightly's cache persists
        pairs = []
        for i in range(a.rounds):
            suffix = f"-{i}" if i else ""
            folder = a.out / f"verdict-{stamp}{suffix}"
            one = timed_verdict(a, folder, prepared if not i else {})
            solo_s = solo(a, one["slowest_key"], a.out / f"solo-{stamp}{suffix}")
            result = result or one  # the first round's verdict gives the keys of 1.
            pairs.append({"verdict": folder.name, "wall_s": one["wall_s"], "solo_s": solo_s,
                          "ratio": one["wall_s"] / solo_s, "slowest_key": one["slowest_key"],
                          "timeouts": one["timeouts"], "verdicts": one["verdicts"]})
        ratios = [r["ratio"] for r in pairs]
        result.update(pairs=pairs, pair_ratios={"median": statistics.median(ratios), "min": min(ratios),
                                                "max": max(ratios)},
                      solo_runs_s=[r["solo_s"] for r in pairs], slowest_solo_s=pairs[0]["solo_s"],
                      ratio=pairs[0]["ratio"])
    if a.step in ("all", "verdict"):
        prepared = prepare(a, a.out / f"prepare-{stamp}.log")  # not timed: a nightly's cache persists
        result = timed_verdict(a, a.out / f"verdict-{stamp}", prepared)
    if a.step in ("all", "solo"):
        walls = [solo(a, result["slowest_key"], a.out / (f"solo-{stamp}" + (f"-{i}" if i else "")))
                 for i in range(a.solo_repeat)]
        result["solo_runs_s"] = walls
        result["slowest_solo_s"] = statistics.median(walls)
        result["ratio"] = result["wall_s"] / result["slowest_solo_s"]
    if a.step in ("all", "concurrent") and (a.concurrent or a.step == "concurrent"):
        walls: dict[str, float] = {}

        def one(name: str) -> None:
            walls[name] = verdict(a, a.out / f"concurrent-{name}-{stamp}")[2]

        threads = [threading.Thread(target=one, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result["concurrent"] = {"walls": walls, "ratios": {k: v / result["wall_s"] for k, v in walls.items()},
                                "target": "each <= 1.5 x wall_s (one invocation alone)"}
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "command", "benchmark")}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
