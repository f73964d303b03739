#!/usr/bin/env bash
# The GPU evidence for issues 3, 4, 7 and 8, one evalharness invocation per scenario. Usage:
#   reports/h200-evidence.sh SCENARIO MODEL_DIR GGUF_FILE DATA_DIR TF554_DIR OUT_DIR LIMIT [MAX_NEW_TOKENS]
# SCENARIO:
#   controls   pre45323 injected into on, varlen and decode (issue 3)
#   coarse-key the varlen graph key reduced to (num_q_tokens,) (issue 3)
#   tf554      transformers 5.5.4, the pre-fix release, with graphs on (issue 3)
#   sweep-ab   max_bt 128..1024 step 128: a clean `on` and pre45323 on `varlen` under transformers of this
#              interpreter ("main"), next to transformers 5.5.4 ("old") with graphs on (issues 4 and 8)
#   audit-pre, audit-clean   --audit on varlen at max_bt 384, with pre45323 and without a fault (issue 7)
# DATA_DIR holds GSM8K's test.jsonl and train.jsonl; TF554_DIR is `pip install --target DIR transformers==5.5.4
# tokenizers==0.22.2`. Scenarios started together should share OUT_DIR: they share its run cache (OUT_DIR/runs),
# so a run two scenarios need (the same configuration and engine) is computed once. Every worker of a scenario
# runs on the one GPU; throughput figures of runs that overlapped are not single-run figures.
set -uo pipefail
scenario=${1:?SCENARIO} model=${2:?MODEL_DIR} gguf=${3:?GGUF_FILE} data=${4:?DATA_DIR} tf554=${5:?TF554_DIR}
out=${6:?OUT_DIR} limit=${7:?LIMIT} new=${8:-256}
common=(--model "$model" --gguf-file "$gguf" --data "$data/test.jsonl" --fewshot-data "$data/train.jsonl"
        --limit "$limit" --prompt fewshot --fewshot 8 --attn torch-flash --dtype bf16 --max-new-tokens "$new"
        --cache "$out/runs" --no-progress)
mkdir -p "$out"
eh() { local name=$1; shift
       echo "== $name: evalharness gsm8k ${common[*]} --out $out/$name $*"
       python3 -m evalharness gsm8k "${common[@]}" --out "$out/$name" "$@" > "$out/$name.log" 2>&1
       echo "== $name exit code $?"; grep -E "^(\[[^]]*\] )?max_bt=" "$out/$name.log"; }
case $scenario in
  controls)   eh controls --max-bt 384 --graphs off,on,varlen,decode --inject on=pre45323 --inject varlen=pre45323 \
                 --inject decode=pre45323 --engine main=python3 --jobs 5 ;;
  coarse-key) eh coarse-key --max-bt 384 --graphs off,varlen --inject varlen=coarse-key --engine main=python3 --jobs 2 ;;
  tf554)      eh transformers-5.5.4 --max-bt 384 --graphs off,on --engine old="$tf554" --jobs 3 ;;
  sweep-ab)   eh sweep-ab --max-bt 128:1024:128 --graphs off,on,varlen --inject main:varlen=pre45323 \
                 --engine main=python3 --engine old="$tf554" --jobs 4 ;;
  audit-pre)  eh audit-pre45323 --max-bt 384 --graphs off,varlen --inject varlen=pre45323 --audit --engine main=python3 --jobs 2 ;;
  audit-clean) eh audit-clean --max-bt 384 --graphs off,varlen --audit --engine main=python3 --jobs 2 ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac
