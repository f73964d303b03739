#!/usr/bin/env bash
# GPU evidence still to record (issues 3, 4, 7, 8): each scenario is one evalharness invocation, sized to fit a
# 10-minute device command with Qwen2.5-Coder-0.5B on one H200 (lower LIMIT if it does not). Usage:
#   reports/gpu-todo.sh SCENARIO MODEL_DIR GGUF_FILE DATA_DIR TF554_DIR OUT_DIR [LIMIT]
# SCENARIO: controls | tf554 | sweep | audit | ab. Copy OUT_DIR/<scenario>/{summary.json,report.md} and the
# command into reports/ with the device and versions, as reports/h200-positive-controls/README.md does.
set -uo pipefail
scenario=${1:?SCENARIO} model=${2:?MODEL_DIR} gguf=${3:?GGUF_FILE} data=${4:?DATA_DIR} tf554=${5:?TF554_DIR}
out=${6:?OUT_DIR} limit=${7:-600}
common=(--model "$model" --gguf-file "$gguf" --data "$data/test.jsonl" --fewshot-data "$data/train.jsonl"
        --limit "$limit" --prompt fewshot --fewshot 8 --attn torch-flash --dtype bf16 --max-new-tokens 256
        --cache "$out/runs" --no-progress)
eh() { python3 -m evalharness gsm8k "${common[@]}" "$@"; echo "exit code $?"; }
case $scenario in
  controls)  # issue 3: the positive controls the first recording could not finish
    eh --out "$out/pre45323" --max-bt 384 --graphs off,on,varlen,decode --inject on=pre45323 \
       --inject varlen=pre45323 --inject decode=pre45323 --jobs 4 &
    eh --out "$out/coarse-key" --max-bt 384 --graphs off,varlen --inject varlen=coarse-key --jobs 2; wait ;;
  tf554)  # issue 3: the pre-fix release with graphs on must be flagged
    eh --out "$out/transformers-5.5.4" --max-bt 384 --graphs off,on,varlen,decode --engine "$tf554" --jobs 3 ;;
  sweep)  # issue 4: at which budgets the pre45323 fault on varlen is caught, next to a clean `on`
    eh --out "$out/sweep" --max-bt 128:1024:128 --graphs off,on,varlen --inject varlen=pre45323 --jobs 8 ;;
  audit)  # issue 7: attribution names varlen and max_seqlen_q with the fault; no mismatch without it
    eh --out "$out/audit-pre45323" --max-bt 384 --graphs off,varlen --inject varlen=pre45323 --audit --jobs 2 &
    eh --out "$out/audit-clean" --max-bt 384 --graphs off,varlen --audit --jobs 2; wait ;;
  ab)  # issue 8: transformers 5.17 vs 5.5.4 side by side (the seed's MAIN-vs-PR table)
    eh --out "$out/ab" --max-bt 128:1024:128 --graphs off,on --engine main=python3 --engine old="$tf554" --jobs 8 ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac
