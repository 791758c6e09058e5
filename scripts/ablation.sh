#!/usr/bin/env bash
# The four Table-5 configurations of the paper on a real dataset root, one after another,
# then their validation figures (selected on validation macro F1) in one table.
#
#   scripts/ablation.sh ROOT [OUT=runs/ablation] [--set KEY=VALUE ...]
#
# Example (GPU, from scratch, 15 epochs):
#   scripts/ablation.sh ~/data/kneeKL224 runs/ablation --set model.pretrained=none \
#       --set train.epochs=15 --set data.num_workers=12
set -euo pipefail
root=${1:?usage: scripts/ablation.sh ROOT [OUT] [--set KEY=VALUE ...]}
shift
out=runs/ablation
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then out=$1; shift; fi  # OUT given (not an option)
mkdir -p "$out"
start=$(date +%s)
for name in proposed clahe raw dual-noattn; do
  t=$(date +%s)
  koa train --config paper --config "ablation-$name" --data "$root" "$@" --out "$out/$name"
  echo "$name: $(( $(date +%s) - t )) s" | tee -a "$out/timings.txt"
done
echo "all four, data preparation included: $(( $(date +%s) - start )) s" | tee -a "$out/timings.txt"
koa runs "$out"/proposed "$out"/clahe "$out"/raw "$out"/dual-noattn
