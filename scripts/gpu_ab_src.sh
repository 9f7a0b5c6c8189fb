#!/usr/bin/env bash
# A/B of two kvarn source trees side by side on a two-GPU host (after `source .gpu/install.sh .gpu`):
# this checkout on GPU 0, an older tree's src/ on GPU 1, same arm and burst arguments:
#   git archive REV src | tar -x -C oldsrc        # on the dev box, then carry oldsrc/ (untracked) along
#   OUT=ab ARM_TIMEOUT=200 bash scripts/gpu_ab_src.sh oldsrc/src MODEL_DIR kvarn_k4v2_g128 --bursts P --steps
# Results: $OUT/new/ and $OUT/old/ (gpu_bursts.sh logs and JSON). The old tree runs from a scratch copy of
# this repo with src/ replaced, so gpu_bursts.sh's own PYTHONPATH points at the old package.
set -uo pipefail
cd "$(dirname "$0")/.."
OLD=$1; MODEL=$2; ARM=$3; shift 3
OUT="${OUT:-gpu_results}"; mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT  # after both lanes (wait below)
cp -r scripts benchmarks pyproject.toml README.md "$scratch"/ && cp -r "$OLD" "$scratch/src"
case $MODEL in /*) ;; *) MODEL=$PWD/$MODEL ;; esac
OUT=$OUT/new LANES=0 bash scripts/gpu_bursts.sh "$MODEL" "$ARM" "$@" &
(cd "$scratch" && OUT=$OUT/old LANES=1 bash scripts/gpu_bursts.sh "$MODEL" "$ARM" "$@") &
wait
