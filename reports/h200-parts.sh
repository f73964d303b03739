#!/usr/bin/env bash
# Build the transfer parts that reports/h200-drive.sh unpacks on the device, from the repository root:
#   .gpu/s1-NN/s1.part.NN  wheels the H200 image lacks (whl/), transformers 5.5.4 (tf554/), GSM8K test/train and
#                          GSM8K-Platinum JSONL (data/), SmolLM2-135M (models/)
#   .gpu/g-NN/g.part.NN    Gemma 3 270M (models/)
# 45 MB each (a call carries 64 MiB with the ~12 MB checkout), one folder per device call (`carry` it, then
# `mkdir -p /tmp/parts && cp .gpu/X/* /tmp/parts/`).
# Add `.gpu/` to .git/info/exclude first: nothing here is committed. Needs ../shared (gpu-bundle, models, data).
set -euo pipefail
shared=${SHARED:-../shared}
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
"$shared/gpu-bundle/make" "$w/bundle" --tf554 smollm2-135m gemma3-270m >/dev/null
mkdir -p "$w/x" && cat "$w"/bundle/part.* | tar -C "$w/x" -xf -
b=$w/x/b; mkdir -p "$w/s1/data" "$w/s1/models" "$w/g/models"
mv "$b/whl" "$b/tf554" "$w/s1/"
cp "$shared"/data/gsm8k/{test,train,platinum_test}.jsonl "$w/s1/data/"
mv "$b"/models/SmolLM2* "$w/s1/models/" && mv "$b"/models/gemma* "$w/g/models/"
rm -rf .gpu/s1-* .gpu/g-* && mkdir -p .gpu
for p in s1 g; do
  tar -C "$w/$p" -cf - . | split -b 45000000 -d -a 2 - "$w/$p.part."
  for f in "$w/$p".part.*; do n=${f##*.}; mkdir -p ".gpu/$p-$n" && mv "$f" ".gpu/$p-$n/"; done
done
ls .gpu
