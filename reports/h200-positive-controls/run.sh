#!/usr/bin/env bash
# Reproduces reports/h200-positive-controls/ on a CUDA machine. Usage:
#   reports/h200-positive-controls/run.sh MODEL_DIR GGUF_FILE DATA_DIR TF554_DIR OUT_DIR [LIMIT] [MAX_NEW_TOKENS]
# MODEL_DIR/GGUF_FILE: Qwen2.5-Coder-0.5B-Instruct Q4_K_M (`evalharness gsm8k --model qwen2.5-coder-0.5b` fetches
# it); DATA_DIR: GSM8K test.jsonl and train.jsonl; TF554_DIR: `pip install --target DIR transformers==5.5.4
# tokenizers==0.22.2`, the pre-fix release (bool-only use_cuda_graph), driven through --engine.
# Each scenario is one evalharness invocation with its own summary.json and report.md; they share one run cache
# (so `off` is computed once) and run side by side on the one GPU (workers size their KV cache from the workload).
set -uo pipefail
model=${1:?MODEL_DIR} gguf=${2:?GGUF_FILE} data=${3:?DATA_DIR} tf554=${4:?TF554_DIR} out=${5:?OUT_DIR}
limit=${6:-600} new=${7:-256}
common=(--model "$model" --gguf-file "$gguf" --data "$data/test.jsonl" --fewshot-data "$data/train.jsonl"
        --limit "$limit" --prompt fewshot --fewshot 8 --max-bt 384 --attn torch-flash --dtype bf16
        --max-new-tokens "$new" --cache "$out/runs" --no-progress)
run() { local name=$1; shift; echo "== $name: evalharness gsm8k ${common[*]} --out $out/$name $*";
        python3 -m evalharness gsm8k "${common[@]}" --out "$out/$name" "$@" > "$out/$name.log" 2>&1;
        echo "== $name exit code $?"; grep -E "^max_bt=" "$out/$name.log"; }
mkdir -p "$out"
run transformers-5.5.4 --graphs off,on,varlen,decode --engine "$tf554" --jobs 3 &
run clean --graphs off,on,varlen,decode --jobs 5
run pre45323 --graphs off,on,varlen,decode --inject on=pre45323 --inject varlen=pre45323 --inject decode=pre45323 \
    --jobs 4 &
run coarse-key --graphs off,varlen --inject varlen=coarse-key --jobs 2 &
wait
