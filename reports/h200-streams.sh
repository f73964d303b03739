#!/usr/bin/env bash
# Two scenario streams side by side on a 2-GPU H200 host (device kind nvidia-h200-x2): each stream gets one GPU,
# half of the cores (taskset) and its own claims folder, so `--jobs auto` in one stream sizes itself for its half.
#   reports/h200-streams.sh OUT_DIR "SCENARIOS OF STREAM A" "SCENARIOS OF STREAM B"
# Scenarios are reports/h200-session.sh's; one that finished (OUT_DIR/.done-NAME) is not run again, so the script can
# be started again after an interruption (finished runs come back from OUT_DIR/runs).
set -uo pipefail
out=${1:?OUT_DIR}; a=${2:-}; b=${3:-}
half=$(( $(nproc) / 2 ))
[[ -z $b ]] && half=$(nproc)  # one stream (e.g. kind nvidia-h200, one GPU): all the cores, nothing beside it
mkdir -p "$out"
stream() {  # stream GPU FIRST_CORE NAME SCENARIOS
  local gpu=$1 lo=$2 name=$3 s; shift 3
  for s in $*; do
    [[ -f $out/.done-$s ]] && continue
    CUDA_VISIBLE_DEVICES=$gpu EVALHARNESS_CLAIMS=/tmp/claims-$name \
      taskset -c "$lo-$((lo + half - 1))" bash reports/h200-session.sh "$out" "$s" && touch "$out/.done-$s"
  done >> "$out/stream-$name.log" 2>&1
}
stream 0 0 a $a &
stream 1 "$half" b $b &
wait
