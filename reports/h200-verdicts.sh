#!/usr/bin/env bash
# GPU evidence for issues 14 (confirmed verdicts) and 18 (stale-constant check), one invocation per scenario. Usage:
#   reports/h200-verdicts.sh SCENARIO MODEL DATA_DIR OUT_DIR LIMIT [TF554_DIR]
# MODEL: an embedded model name (gemma3-270m, qwen2.5-coder-0.5b) or a local folder (GGUF=FILE in the environment
# adds --gguf-file FILE, as reports/h200-evidence.sh's GGUF_FILE). DATA_DIR holds GSM8K's
# test.jsonl and train.jsonl. TF554_DIR (scenario tf554 only): `pip install --target DIR transformers==5.5.4`.
# SCENARIO:
#   pre45323   pre45323 injected into varlen: STALE_GRAPH confirmed by a re-run, with stale_constants naming
#              max_seqlen_q (and max_seqlen_k[...]); 3 max_bt values
#   clean      clean on/varlen at 3 max_bt values: PASS, no confirmation re-run, constant check with 0 findings
#   repeat     clean varlen, --repeat 3 at 2 max_bt values: 3 of 3 runs match per cell (a false-flag rate)
#   oracle     the same 4-mode workload with --oracle constants and with the default twin oracle (separate caches):
#              wall time of each (`time`), verdicts of each
#   tf554      transformers 5.5.4 (the pre-fix release) with graphs on: stale constants flagged
set -uo pipefail
scenario=${1:?SCENARIO} model=${2:?MODEL} data=${3:?DATA_DIR} out=${4:?OUT_DIR} limit=${5:?LIMIT} tf554=${6:-}
common=(--model "$model" --data "$data/test.jsonl" --fewshot-data "$data/train.jsonl" --limit "$limit"
        --prompt fewshot --fewshot 8 --attn torch-flash --dtype bf16 --no-progress ${GGUF:+--gguf-file "$GGUF"})
mkdir -p "$out"
show() {  # per cell: verdict, confirmation, stale constants
  python3 - "$1/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
for c in s["cells"]:
    conf = c.get("confirmation") or {}
    chk = c.get("constant_check") or {}
    names = ",".join(chk.get("names", {})) or "-"
    print(f"{c['id']:<28} {c['verdict']:<16} twin={c.get('twin_mismatches')}/{c.get('twin_compared')} "
          f"confirmation={conf.get('status', '-')}({conf.get('runs_compared', 0)} runs, "
          f"{conf.get('runs_matching_twin', 0)} match) repeats={c.get('repeats')} "
          f"stale_constants={c.get('stale_constants_total')} [{names}] replays_checked={chk.get('replays_checked')} "
          f"wall_s={c.get('wall_s')}")
print("exit_code", s["exit_code"])
PY
}
eh() { local name=$1; shift
       echo "== $name: evalharness gsm8k ${common[*]} --out $out/$name $*"
       local t0=$SECONDS
       python3 -m evalharness gsm8k "${common[@]}" --out "$out/$name" "$@" > "$out/$name.log" 2>&1
       echo "== $name exit code $? in $((SECONDS - t0)) s"; show "$out/$name"; }
case $scenario in
  pre45323) eh pre45323 --max-bt 256,384,512 --graphs off,varlen --inject varlen=pre45323 --jobs 4 ;;
  clean)    eh clean --max-bt 256,384,512 --graphs off,on,varlen --jobs 6 ;;
  repeat)   eh repeat --max-bt 256,384 --graphs off,varlen --repeat 3 --jobs 6 ;;
  oracle)   eh oracle-constants --max-bt 384 --graphs off,on,varlen,decode --oracle constants --jobs 4
            eh oracle-twin --max-bt 384 --graphs off,on,varlen,decode --jobs 4 ;;
  tf554)    eh tf554 --max-bt 384 --graphs off,on --engine old="${tf554:?TF554_DIR}" --jobs 3 ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac
