#!/usr/bin/env bash
# One device call of this session's H200 evidence (kind nvidia-h200-x2): unpack the parts once, start the two
# scenario streams once, detached, then wait up to SECS seconds and pack what finished into OUT.
#   A="..." B="..." reports/h200-drive.sh OUT SECS
# The parts (/tmp/parts/s1.part.* and g.part.*) come from reports/h200-parts.sh, one carried folder per call.
set -u
out=${1:?OUT}; secs=${2:-560}; t0=$SECONDS; ev=/tmp/ev
pipi() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$@"; }
if [[ ! -f /tmp/g/unpacked ]]; then
  mkdir -p /tmp/g
  for p in s1 g; do cat /tmp/parts/$p.part.* | tar -C /tmp/g -xf - || exit 3; done
  pipi /tmp/site /tmp/g/whl/*.whl && pipi /tmp/tf554 /tmp/g/tf554/*.whl && touch /tmp/g/unpacked || exit 3
  mkdir -p $ev && { nvidia-smi; lscpu; python3 -c 'import torch, sys; sys.path.insert(0, "/tmp/site"); import transformers
print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'; } > $ev/device.txt 2>&1
fi
mkdir -p $ev
if [[ ! -f $ev/streams.finished ]] && ! { [[ -f $ev/streams.pid ]] && kill -0 "$(cat $ev/streams.pid)" 2>/dev/null; }; then
  echo "$(date -u +%T) starting streams A=[$A] B=[$B]" >> $ev/drive.log
  setsid nohup bash -c "reports/h200-streams.sh $ev '$A' '$B'; touch $ev/streams.finished" > $ev/streams.out 2>&1 &
  echo $! > $ev/streams.pid
fi
while [[ ! -f $ev/streams.finished ]] && (( SECONDS - t0 < secs )); do sleep 5; done
echo "$(date -u +%T) call ends; finished: $(ls $ev/.done-* 2>/dev/null | sed 's/.*done-//' | tr '\n' ' ')" >> $ev/drive.log
tail -3 $ev/drive.log; tail -n 4 $ev/stream-a.log $ev/stream-b.log 2>/dev/null
tar -C $ev --exclude=results.jsonl --exclude=job.json --exclude='*.lock' -cJf "$out/ev.tar.xz" . 2>/dev/null; ls -la "$out"
