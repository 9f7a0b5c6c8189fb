#!/usr/bin/env bash
# Call 2 of 2026-12-01s: pool programs inside the Gluon launch (q rotated by a launch of its own first): the decode
# kernel tests, per-kernel and CUDA-graph times of the fused path (f32 / f64: pool chunks of 32 / 64 rows) against the
# Triton pool pass before the Gluon launch (f0), then benchmark (a) for kvarn at B >= 32.
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-poolfuse-2026-12-01s/call2.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
timeout 200 python3 -m pytest tests/gpu/test_kernels_decode_attention.py -m gpu -q -p no:cacheprovider -n 4 -x \
  > "$OUT/tests_decode.log" 2>&1
tail -15 "$OUT/tests_decode.log"
cd benchmarks/gpu
timeout 240 python3 probe_gluon_parts.py --shapes 32x8192,128x8192,256x8192,768x1152,8x32768 \
  --pool-variants w4e1f0,w4e1f32,w4e1f64,w4e1f0,w4e1f32 --json "$OUT/fused.json" > "$OUT/fused.log" 2>&1
tail -3 "$OUT/fused.log"
grep parts "$OUT/fused.log" | python3 -c "
import json, sys
for line in sys.stdin:
    r = json.loads(line.split(' ', 1)[1])
    print(r['batch'], r['context'], r['pool_variant'], 'graph', r['graph_us'], {k[:20]: v for k, v in r['kernels'].items()})
"
timeout 150 python3 bench_decode.py --formats kvarn --batches 32 128 256 --contexts 8192 32768 \
  --json "$OUT/bench_decode.json" > "$OUT/bench_decode.log" 2>&1
tail -9 "$OUT/bench_decode.log"
