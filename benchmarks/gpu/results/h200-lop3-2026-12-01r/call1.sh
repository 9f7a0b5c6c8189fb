#!/usr/bin/env bash
# Call 1 of 2026-12-01r: the Gluon path's pool pass without pass 1's load chains (NOREC) and with V rows loaded with K
# rows: its tests, then per-kernel and CUDA-graph times of pool-pass variants (warps w, early V e, chunk rows b),
# then benchmark (a) for kvarn at B >= 32.
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-lop3-2026-12-01r/call1.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
timeout 150 python3 -m pytest tests/gpu/test_kernels_decode_attention.py -m gpu -q -p no:cacheprovider -k "gluon" \
  > "$OUT/tests_gluon.log" 2>&1
tail -3 "$OUT/tests_gluon.log"
cd benchmarks/gpu
timeout 240 python3 probe_gluon_parts.py --shapes 32x8192,128x8192,768x1152,8x32768 \
  --pool-variants w4e0,w4e1,w8e1,w8e1b128,w4e1b128 --json "$OUT/pool_variants.json" > "$OUT/pool_variants.log" 2>&1
grep parts "$OUT/pool_variants.log" | python3 -c "
import json, sys
for line in sys.stdin:
    r = json.loads(line.split(' ', 1)[1])
    print(r['batch'], r['context'], r['pool_variant'], 'graph', r['graph_us'], {k[:28]: v for k, v in r['kernels'].items()})
"
timeout 150 python3 bench_decode.py --formats kvarn --batches 32 128 256 --contexts 8192 32768 \
  --json "$OUT/bench_decode.json" > "$OUT/bench_decode.log" 2>&1
tail -9 "$OUT/bench_decode.log"
