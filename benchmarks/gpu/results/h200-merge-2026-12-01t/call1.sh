#!/usr/bin/env bash
# Call 1 of 2026-12-01t: the split-K merge inside the Gluon launch (the last program of each (request, KV head) merges,
# arrival counters; decode_gluon_merge.py) against the combine launch: the Gluon / rotate-q decode tests, per-kernel
# and CUDA-graph times of the fused path with the combine launch (f32z) and with the merge (f32zm), twice each, then
# benchmark (a) for kvarn, bf16 and fp8. Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-merge-2026-12-01t/call1.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
timeout 150 python3 -m pytest tests/gpu/test_kernels_decode_attention.py -m gpu -q -p no:cacheprovider -n 4 \
  -k "gluon or rotate_q" > "$OUT/tests_gluon.log" 2>&1
tail -4 "$OUT/tests_gluon.log"
cd benchmarks/gpu
timeout 150 python3 probe_gluon_parts.py --shapes 32x8192,128x8192,256x8192,768x1152,8x32768 \
  --pool-variants w4e1f32z,w4e1f32zm,w4e1f32z,w4e1f32zm --json "$OUT/merge.json" > "$OUT/merge.log" 2>&1
grep parts "$OUT/merge.log" | python3 -c "
import json, sys
for line in sys.stdin:
    r = json.loads(line.split(' ', 1)[1])
    print(r['batch'], r['context'], r['pool_variant'], 'graph', r['graph_us'], {k[:20]: v for k, v in r['kernels'].items()})
"
tail -3 "$OUT/merge.log" | grep -v parts
timeout 100 python3 bench_decode.py --formats kvarn bf16 fp8 --batches 1 8 32 128 256 \
  --contexts 2048 8192 32768 131072 --json "$OUT/bench_decode.json" > "$OUT/bench_decode.log" 2>&1
tail -22 "$OUT/bench_decode.log" | grep -v '^{'
