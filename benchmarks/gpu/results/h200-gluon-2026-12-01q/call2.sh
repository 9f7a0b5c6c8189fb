#!/usr/bin/env bash
# Call 2 of 2026-12-01q: per-kernel GPU time of the Gluon path vs the Triton kernel (probe_gluon_parts.py), then
# benchmark (a) with KVARN_DECODE_GLUON=1 (bf16 / fp8 baselines in the same run).
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-gluon-2026-12-01q/call2.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
cd benchmarks/gpu
timeout 150 python3 probe_gluon_parts.py --json "$OUT/parts.json" > "$OUT/parts.log" 2>&1
cut -c1-600 "$OUT/parts.log" | tail -8
KVARN_DECODE_GLUON=1 timeout 300 python3 bench_decode.py --formats kvarn bf16 fp8 --json "$OUT/bench_decode_gluon.json" \
  > "$OUT/bench_decode_gluon.log" 2>&1
tail -25 "$OUT/bench_decode_gluon.log"
