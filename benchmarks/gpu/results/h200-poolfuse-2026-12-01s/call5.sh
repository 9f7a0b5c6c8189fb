#!/usr/bin/env bash
# Call 5 of 2026-12-01s (+ .gpu/p1 staged): the final kernels (pool programs in the Gluon launch, started after the
# record splits; one-load combine): the whole GPU suite, then benchmark (a) for kvarn, bf16 and fp8.
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-poolfuse-2026-12-01s/call5.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
timeout 330 python3 -m pytest tests/gpu -m gpu -q -n 4 -p no:cacheprovider > "$OUT/tests_all.log" 2>&1
tail -3 "$OUT/tests_all.log"
cd benchmarks/gpu
timeout 200 python3 bench_decode.py --formats kvarn bf16 fp8 --batches 1 8 32 128 256 \
  --contexts 2048 8192 32768 131072 --json "$OUT/bench_decode.json" > "$OUT/bench_decode.log" 2>&1
tail -22 "$OUT/bench_decode.log" | grep -v '^{'
