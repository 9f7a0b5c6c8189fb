#!/usr/bin/env bash
# Call 3 of 2026-12-01s: + the split-K combine loading every partial at once (c1; c0 = one per loop step, as before)
# and the Gluon record program's first block ids in one round trip: the Gluon / rotate-q / split decode tests, then
# per-kernel and CUDA-graph times of f0 (Triton pool pass first) and f32 / f64 (pool programs in the Gluon launch) with
# either combine, then benchmark (a) for kvarn at B >= 32.
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-poolfuse-2026-12-01s/call3.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
timeout 150 python3 -m pytest tests/gpu/test_kernels_decode_attention.py -m gpu -q -p no:cacheprovider -n 4 \
  -k "gluon or rotate_q or split" > "$OUT/tests_decode.log" 2>&1
tail -2 "$OUT/tests_decode.log"
cd benchmarks/gpu
timeout 280 python3 probe_gluon_parts.py --shapes 32x8192,128x8192,256x8192,768x1152,8x32768 \
  --pool-variants w4e1f0c0,w4e1f0c1,w4e1f32c1,w4e1f64c1,w4e1f0c1,w4e1f32c1 --json "$OUT/fused.json" > "$OUT/fused.log" 2>&1
grep parts "$OUT/fused.log" | python3 -c "
import json, sys
for line in sys.stdin:
    r = json.loads(line.split(' ', 1)[1])
    print(r['batch'], r['context'], r['pool_variant'], 'graph', r['graph_us'], {k[:20]: v for k, v in r['kernels'].items()})
"
timeout 150 python3 bench_decode.py --formats kvarn --batches 32 128 256 --contexts 8192 32768 \
  --json "$OUT/bench_decode.json" > "$OUT/bench_decode.log" 2>&1
tail -7 "$OUT/bench_decode.log"
