#!/usr/bin/env bash
# The GPU evidence for issue 15 (the decode path under CUDA graphs, torch-flash's paged decode kernel). Usage:
#   reports/h200-decode.sh SCENARIO GGUF_PATH TEST_JSONL OUT_DIR [LIMIT] [JOBS]
# SCENARIO:
#   gpu-tests      pytest -m gpu tests/test_gpu.py: the kernel on CUDA vs a reference and inside a CUDA graph, decode
#                  graphs in the engine equal to their padded-eager twin, decode steps vs paged|sdpa
#   clean          off,on,varlen,decode with --attn torch-flash: all PASS, decode graphs captured on `on` and `decode`
#   pre45323       pre45323 injected into on, varlen and decode: STALE_GRAPH on on and varlen, PASS on decode (the
#                  per-path escape hatch: varlen graphs off, decode graphs on)
#   decode-coarse  the decode-path positive control injected into on and decode: flagged on on and decode, varlen PASS
#   all            the three harness scenarios one after the other (gpu-tests separately)
# The few-shot examples come from train.jsonl next to TEST_JSONL when it is there, else from the embedded GSM8K copy
# (then the embedded test split is used too). Scenarios share OUT_DIR/runs, so a run two of them need (the clean
# `off` reference, the clean twins) is computed once. After each scenario, one line per mode: verdict, twin
# mismatches, and the CUDA graphs each run captured per path (resolved.graphs_captured in summary.json).
set -uo pipefail
scenario=${1:?SCENARIO} gguf=${2:?GGUF_PATH} test_jsonl=${3:?TEST_JSONL} out=${4:?OUT_DIR} limit=${5:-600} jobs=${6:-4}
cd "$(dirname "$0")/.."
if [[ $scenario == gpu-tests ]]; then
  exec python3 -m pytest -q -m gpu tests/test_gpu.py -rA
fi
data=(--data "$test_jsonl")
[[ -f "$(dirname "$test_jsonl")/train.jsonl" ]] || { echo "no train.jsonl next to $test_jsonl: embedded GSM8K"; data=(); }
common=(--model "$(dirname "$gguf")" --gguf-file "$(basename "$gguf")" "${data[@]}" --limit "$limit" --prompt fewshot
        --fewshot 8 --attn torch-flash --dtype bf16 --max-bt 384 --graphs off,on,varlen,decode
        --cache "$out/runs" --no-progress --jobs "$jobs")
mkdir -p "$out"
show() {  # one line per mode from summary.json
  [[ -f "$1/summary.json" ]] || { echo "  no $1/summary.json: see $1.log"; return; }
  python3 - "$1/summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
for mode, c in s["modes"].items():
    r = c.get("resolved_engine") or {}
    print(f"  {mode:7s} {c['verdict']:14s} twin mismatches {c['twin_mismatches']}/{c['twin_compared']}  "
          f"graphs captured {r.get('graphs_captured')}  max_blocks_per_request {r.get('max_blocks_per_request')}  "
          f"inject {c.get('inject')}")
EOF
}
eh() { local name=$1; shift
       echo "== $name: evalharness gsm8k ${common[*]} --out $out/$name $*"
       python3 -m evalharness gsm8k "${common[@]}" --out "$out/$name" "$@" > "$out/$name.log" 2>&1
       echo "== $name exit code $?"; grep -E "^(\[[^]]*\] )?max_bt=" "$out/$name.log"; show "$out/$name"; }
run() {
  case $1 in
    clean)         eh clean ;;
    pre45323)      eh pre45323 --inject on=pre45323 --inject varlen=pre45323 --inject decode=pre45323 ;;
    decode-coarse) eh decode-coarse --inject on=decode-coarse --inject decode=decode-coarse ;;
    *) echo "unknown scenario $1" >&2; exit 2 ;;
  esac
}
if [[ $scenario == all ]]; then for s in clean pre45323 decode-coarse; do run "$s"; done; else run "$scenario"; fi
