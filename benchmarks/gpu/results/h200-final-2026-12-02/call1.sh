#!/usr/bin/env bash
# Call 1 of 2026-12-02 (+ .gpu/p1 staged): the final code (f98eeec: one Walsh-Hadamard helper, one combine helper;
# 993a744: arrival counters reserved once) on the H200: the whole GPU test suite, then benchmark (a).
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-final-2026-12-02/call1.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
git log --oneline -1 2>/dev/null || true
timeout 380 python3 -m pytest tests/gpu -m gpu -q -n 4 -p no:cacheprovider > "$OUT/tests_gpu.log" 2>&1
echo "pytest rc=$?"; tail -5 "$OUT/tests_gpu.log"
cd benchmarks/gpu
timeout 120 python3 bench_decode.py --formats kvarn bf16 fp8 --batches 1 8 32 128 256 \
  --contexts 2048 8192 32768 131072 --json "$OUT/bench_decode.json" > "$OUT/bench_decode.log" 2>&1
tail -24 "$OUT/bench_decode.log" | grep -v '^{'
