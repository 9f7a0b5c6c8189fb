#!/usr/bin/env bash
# Call 7 of 2026-12-01s: the committed code (the launcher no longer allocates the rotated-q buffer on the default
# path; an in-kernel merge of the partials was tried offline and dropped before this call: 194 registers): the Gluon /
# rotate-q decode tests, then benchmark (a) for kvarn at B 32-256, 8K.
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-poolfuse-2026-12-01s/call7.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
timeout 120 python3 -m pytest tests/gpu/test_kernels_decode_attention.py -m gpu -q -p no:cacheprovider -n 4 \
  -k "gluon or rotate_q" > "$OUT/tests_gluon.log" 2>&1
tail -2 "$OUT/tests_gluon.log"
cd benchmarks/gpu
timeout 40 python3 bench_decode.py --formats kvarn --batches 32 128 256 --contexts 8192 \
  --json "$OUT/bench_decode.json" > "$OUT/bench_decode.log" 2>&1
tail -4 "$OUT/bench_decode.log" | grep -v '^{'
