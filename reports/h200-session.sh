#!/usr/bin/env bash
# This session's H200 evidence, one scenario per argument, run from the repository root on the device after
# .gpu/unpack.sh put the models in /tmp/g/models, GSM8K in /tmp/g/data, wheels in /tmp/site, 5.5.4 in /tmp/tf554.
#   reports/h200-session.sh OUT_DIR SCENARIO...
# Every scenario writes OUT_DIR/NAME/ (summary.json, report.md, report.html, samples.jsonl) and OUT_DIR/NAME.log;
# scenarios share OUT_DIR/runs (a run two scenarios need is computed once). LIMIT (default 128) questions, 8-shot.
set -uo pipefail
out=${1:?OUT_DIR}; shift
export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
limit=${LIMIT:-128}
smol=(--model /tmp/g/models --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf)
gemma=(--model /tmp/g/models --gguf-file gemma-3-270m-q4_k_m.gguf)
data=(--data /tmp/g/data/test.jsonl --fewshot-data /tmp/g/data/train.jsonl)
plat=(--data /tmp/g/data/platinum_test.jsonl)
common=(--limit "$limit" --prompt fewshot --fewshot 8 --attn torch-flash --dtype bf16 --max-new-tokens 256
        --no-progress --cache "$out/runs")
mkdir -p "$out"
show() {  # per cell: verdict, twin mismatches, confirmation, repeats, stale constants, graphs captured
  [[ -f $1/summary.json ]] || { echo "   no summary.json: see $1.log"; return; }
  python3 - "$1/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
for c in s["cells"]:
    conf, chk = c.get("confirmation") or {}, c.get("constant_check") or {}
    print(f"   {c['id']:<28} {c['verdict']:<16} twin={c.get('twin_mismatches')}/{c.get('twin_compared')} "
          f"confirmation={conf.get('status', '-')} repeats={c.get('repeats')} "
          f"stale_constants={c.get('stale_constants_total')} [{','.join(chk.get('names', {})) or '-'}] "
          f"graphs={(c.get('resolved_engine') or {}).get('graphs_captured')} wall_s={c.get('wall_s')}")
PY
}
patched() {  # per graph run (and twin) of each cell: mismatches vs the twin and meta.json's "patch" (reset race)
  [[ -f $1/summary.json ]] || return
  python3 - "$1/summary.json" "$out/runs" <<'PY'
import json, sys
from pathlib import Path
from evalharness.config import EngineConfig
s, patch = json.load(open(sys.argv[1])), {}
for m in Path(sys.argv[2]).glob("*/meta.json"):
    meta = json.loads(m.read_text())
    if "patch" in meta:
        e = meta["engine"]
        patch[EngineConfig.from_json(e).key()] = meta["patch"]
show = lambda p: {k: v for k, v in (p or {}).items() if k not in ("patch", "targets")}
for c in s["cells"]:
    runs = (c.get("confirmation") or {}).get("runs") or [{"run": c.get("run"), "role": "run", "mismatches": c.get("twin_mismatches")}]
    for r in runs:
        print(f"   {c['id']:<28} {r['role']:<7} {r['run']} mismatches={r.get('mismatches')} patch={show(patch.get(r['run']))}")
    if c.get("twin"):
        print(f"   {c['id']:<28} twin    {c['twin']} patch={show(patch.get(c['twin']))}")
PY
}
eh() { local name=$1; shift
       echo "== $(date -u +%T) $name: evalharness gsm8k ${common[*]} $* --out $out/$name"
       local t0=$SECONDS
       timeout "${SCEN_TIMEOUT:-590}" python3 -m evalharness gsm8k "${common[@]}" "$@" --out "$out/$name" > "$out/$name.log" 2>&1
       echo "== $name exit code $? in $((SECONDS - t0)) s"; show "$out/$name"; }
speed() { local name=$1; shift  # benchmarks/gpu_verdict.py on Gemma 3, SPEED_LIMIT (default 300) questions, CoT
         timeout "${SCEN_TIMEOUT:-590}" python3 benchmarks/gpu_verdict.py "${gemma[@]}" "${plat[@]}" \
           --limit "${SPEED_LIMIT:-300}" --prompt cot --max-new-tokens 256 --max-bt 384 --attn torch-flash "$@" \
           > "$out/$name.log" 2>&1
         echo "== $name exit $?"; tail -5 "$out/$name.log"; }
for s in "$@"; do
  case $s in
    # the tests read GSM8K from ../shared/data/gsm8k beside the checkout, as on the CPU machines
    gpu-tests)   [[ -e ../shared/data/gsm8k ]] || { mkdir -p ../shared/data && ln -s /tmp/g/data ../shared/data/gsm8k; }
                 timeout 300 python3 -m pytest -q -m gpu tests/test_gpu.py -rA -p no:cacheprovider > "$out/gpu-tests.log" 2>&1
                 echo "== gpu-tests exit $?"; tail -15 "$out/gpu-tests.log" ;;
    # issue 15 (SmolLM2: full attention, decode fast path through torch-flash's paged decode kernel)
    smol-clean)  eh smol-clean "${smol[@]}" "${data[@]}" --max-bt 384 --graphs off,on,varlen,decode ;;
    smol-pre)    eh smol-pre45323 "${smol[@]}" "${data[@]}" --max-bt 384 --graphs off,on,varlen,decode \
                   --inject on=pre45323 --inject varlen=pre45323 --inject decode=pre45323 ;;
    smol-dcoarse) eh smol-decode-coarse "${smol[@]}" "${data[@]}" --max-bt 384 --graphs off,on,varlen,decode \
                   --inject on=decode-coarse --inject decode=decode-coarse ;;
    # issues 14/18: repeatability (several max_bt, GPU shared by the scenario's workers), transformers 5.5.4
    smol-repeat) eh smol-repeat "${smol[@]}" "${data[@]}" --max-bt 256,512,768 --graphs off,on,varlen ;;
    smol-tf554)  eh smol-tf554 "${smol[@]}" "${data[@]}" --max-bt 384 --graphs off,on --engine old=/tmp/tf554 ;;
    gemma-repeat) eh gemma-repeat "${gemma[@]}" "${plat[@]}" --max-bt 256,384,512 --graphs off,on,varlen ;;
    gemma-repeat3) eh gemma-repeat3 "${gemma[@]}" "${plat[@]}" --max-bt 256,384 --graphs off,varlen --repeat 3 ;;
    gemma-pre)   eh gemma-pre45323 "${gemma[@]}" "${plat[@]}" --max-bt 384 --graphs off,varlen --inject varlen=pre45323 ;;
    # issue 14's open question: is Gemma 3's non-deterministic first token (reports/h200-repeat/) async batching's?
    gemma-async) eh gemma-async "${gemma[@]}" "${plat[@]}" --max-bt 384,512 --graphs off,varlen --async on,off --repeat 4 ;;
    # transformers' async reset race (reports/h200-repeat/ANALYSIS.md, evalharness/engine/reset_race.py): forced (the graph run
    # only: confirmed STALE_GRAPH, sample 0 alone, every max_bt), fixed (0 flagged), probed (flagged runs: reset after H2D)
    gemma-race-force) eh gemma-race-force "${gemma[@]}" "${plat[@]}" --max-bt 256,384,512 --graphs off,varlen --inject varlen=reset-late; patched "$out/gemma-race-force" ;;
    gemma-race-fix) eh gemma-race-fix "${gemma[@]}" "${plat[@]}" --max-bt 384,512 --graphs off,varlen --repeat 5 --inject off=sync-reset --inject varlen=sync-reset; patched "$out/gemma-race-fix" ;;
    gemma-race-probe) eh gemma-race-probe "${gemma[@]}" "${plat[@]}" --max-bt 384,512 --graphs off,varlen --repeat 5 --inject off=reset-probe --inject varlen=reset-probe; patched "$out/gemma-race-probe" ;;
    gemma-oracle) eh gemma-oracle-constants "${gemma[@]}" "${plat[@]}" --max-bt 384 --graphs off,on,varlen,decode \
                   --oracle constants --cache "$out/runs-oracle" ;;
    # issue 12 (and issue 18's oracle timing): one full verdict timed, its slowest run alone, two at once
    # SOLO_REPEAT=N: the slowest run alone N times, its median against the verdict (a solo run is noisy)
    speed-verdict|speed-solo|speed-concurrent) speed "$s" --out "$out/h200-speed/gemma3-270m" --step "${s#speed-}" \
                   --solo-repeat "${SOLO_REPEAT:-1}" ;;
    speed-oracle) speed "$s" --oracle constants --out "$out/h200-speed/gemma3-270m-oracle-constants" --step verdict ;;
    # issue 12's experiment: the same verdict and solo run with CUDA MPS (the workers' processes share one GPU context
    # instead of time-slicing it), where this host lets a daemon start
    # ... and whether the workers' OpenMP threads spinning between ops take the cores from their Python threads
    speed-passive) export OMP_WAIT_POLICY=PASSIVE; speed "$s" --out "$out/h200-speed/gemma3-270m-passive" --step verdict; unset OMP_WAIT_POLICY ;;
    # the harness's own --mps (a private MPS daemon per invocation): the verdict, its slowest run alone (no MPS: one
    # worker) and two verdicts at once (two daemons)
    speed-mps-own) speed speed-mps-own-verdict --mps --out "$out/h200-speed/gemma3-270m-mps-own" --step verdict
                   speed speed-mps-own-solo --mps --out "$out/h200-speed/gemma3-270m-mps-own" --step solo \
                     --solo-repeat "${SOLO_REPEAT:-1}"
                   speed speed-mps-own-concurrent --mps --out "$out/h200-speed/gemma3-270m-mps-own" --step concurrent ;;
    # next: each verdict timed right before its own solo run (--step pairs; ROUNDS rounds), plain and with --mps;
    # then the default, MPS wherever workers share a GPU and a daemon starts (no flag)
    speed-pairs) speed speed-pairs --mps off --out "$out/h200-speed/gemma3-270m-pairs" --step pairs \
                   --rounds "${ROUNDS:-2}" ;;
    speed-pairs-mps) speed speed-pairs-mps --mps --out "$out/h200-speed/gemma3-270m-pairs-mps" --step pairs \
                   --rounds "${ROUNDS:-2}" ;;
    speed-pairs-default) speed speed-pairs-default --out "$out/h200-speed/gemma3-270m-pairs-default" --step pairs \
                   --rounds "${ROUNDS:-2}" ;;
    # a GPU fault (illegal memory access) in the varlen worker, beside `off` and the twin on the same GPU: without and
    # with --mps (under MPS the fault reaches every worker of the GPU; the pool retries crashed jobs outside MPS)
    gpu-fault)   eh gemma-gpu-fault "${gemma[@]}" "${plat[@]}" --max-bt 384 --graphs off,varlen --inject varlen=gpu-fault \
                   --no-mps ;;
    mps-fault)   eh gemma-mps-fault "${gemma[@]}" "${plat[@]}" --max-bt 384 --graphs off,varlen --inject varlen=gpu-fault \
                   --mps ;;
    # the default (no flag): three workers share the GPU, so MPS; `off` gets the error a neighbour's fault gives under
    # MPS, and its retry outside MPS passes
    mps-neighbour) eh gemma-mps-neighbour "${gemma[@]}" "${plat[@]}" --max-bt 384 --graphs off,varlen \
                   --inject off=mps-neighbour ;;
    speed-mps)   export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
                 mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
                 if nvidia-cuda-mps-control -d; then
                   speed speed-mps-verdict --out "$out/h200-speed/gemma3-270m-mps" --step verdict
                   speed speed-mps-solo --out "$out/h200-speed/gemma3-270m-mps" --step solo
                   echo quit | nvidia-cuda-mps-control
                 else echo "== speed-mps: no MPS daemon on this host"; fi
                 unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY ;;
    # reports/h200-sweep/SAMPLE66.md: SmolLM2's sample 66 under decode graphs is the async reset race (forced, then fixed)
    smol-race-force) eh smol-race-force "${smol[@]}" "${data[@]}" --max-new-tokens 128 --max-bt 256,384,640,768 --graphs off,decode --inject decode=reset-late; patched "$out/smol-race-force" ;;
    # reports/h200-race/README.md: at 640 the forced race did not give SAMPLE66.md's predicted tokens; observe it there
    smol-race-probe) eh smol-race-probe "${smol[@]}" "${data[@]}" --max-new-tokens 128 --max-bt 640 --graphs off,decode --repeat 3 --inject off=reset-probe --inject decode=reset-probe; patched "$out/smol-race-probe" ;;
    smol-race-fix) eh smol-race-fix "${smol[@]}" "${data[@]}" --max-new-tokens 128 --max-bt 384,512,896,1024 --graphs off,on,decode --repeat 3 --inject off=sync-reset --inject on=sync-reset --inject decode=sync-reset; patched "$out/smol-race-fix" ;;
    # issue 16
    sweep-ab)    eh sweep-ab "${smol[@]}" "${data[@]}" --max-bt 128:1024:128 --graphs off,on,varlen,decode \
                   --inject main:varlen=pre45323 --engine main=python3 --engine old=/tmp/tf554 \
                   --max-new-tokens "${SWEEP_NEW_TOKENS:-256}" ;;
    audit-pre)   eh audit-pre45323 "${smol[@]}" "${data[@]}" --max-bt 384 --graphs off,varlen --inject varlen=pre45323 --audit ;;
    audit-clean) eh audit-clean "${smol[@]}" "${data[@]}" --max-bt 384 --graphs off,varlen --audit ;;
    audit-overhead) timeout "${SCEN_TIMEOUT:-590}" python3 benchmarks/audit_overhead.py --mode varlen --keep "$out/audit-overhead" -- \
                   "${smol[@]}" "${data[@]}" --limit "$limit" --prompt fewshot --fewshot 8 --attn torch-flash --dtype bf16 \
                   --max-bt 384 > "$out/audit-overhead.log" 2>&1; echo "== audit-overhead exit $?"; tail -6 "$out/audit-overhead.log" ;;
    # issue 12: the dequantized GGUF cache on the GPU host (one build, the other workers hit it)
    gguf-load)   timeout "${SCEN_TIMEOUT:-590}" python3 benchmarks/gguf_cache_load.py --model /tmp/g/models \
                   --gguf-file gemma-3-270m-q4_k_m.gguf --workers 6 > "$out/gguf-load.log" 2>&1
                 echo "== gguf-load exit $?"; tail -12 "$out/gguf-load.log" ;;
    *) echo "unknown scenario $s" >&2 ;;
  esac
done
