#!/usr/bin/env bash
# Call 2 of 2026-12-01t: the merge made one pass (online over the partials, eight partials' loads in flight): the
# Gluon / rotate-q decode tests; combine launch (f32z) against the merge (f32zm) at five shapes, twice; at 32 x 8,192
# the record splits S (5-8) and pool programs P (1, 2, 4) around the chosen S = 6, P = 2 with the merge; benchmark (a).
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-merge-2026-12-01t/call2.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
timeout 150 python3 -m pytest tests/gpu/test_kernels_decode_attention.py -m gpu -q -p no:cacheprovider -n 4 \
  -k "gluon or rotate_q" > "$OUT/tests_gluon.log" 2>&1
tail -4 "$OUT/tests_gluon.log"
cd benchmarks/gpu
show() { grep parts "$1" | python3 -c "
import json, sys
for line in sys.stdin:
    r = json.loads(line.split(' ', 1)[1])
    print(r['batch'], r['context'], r['pool_variant'], 'graph', r['graph_us'], {k[:20]: v for k, v in r['kernels'].items()})
"; }
timeout 120 python3 probe_gluon_parts.py --shapes 32x8192,128x8192,256x8192,768x1152,8x32768 \
  --pool-variants w4e1f32z,w4e1f32zm,w4e1f32z,w4e1f32zm --json "$OUT/merge.json" > "$OUT/merge.log" 2>&1
show "$OUT/merge.log"; tail -3 "$OUT/merge.log" | grep -v parts
timeout 90 python3 probe_gluon_parts.py --shapes 32x8192 --pool-variants \
  w4e1f32zm,w4e1f32zms5,w4e1f32zms7,w4e1f32zms8,w4e1f32zmp1,w4e1f32zmp4,w4e1f32zms5p4,w4e1f32zms7p1,w4e1f32zm \
  --json "$OUT/splits.json" > "$OUT/splits.log" 2>&1
show "$OUT/splits.log"; tail -3 "$OUT/splits.log" | grep -v parts
timeout 100 python3 bench_decode.py --formats kvarn bf16 fp8 --batches 1 8 32 128 256 \
  --contexts 2048 8192 32768 131072 --json "$OUT/bench_decode.json" > "$OUT/bench_decode.log" 2>&1
tail -22 "$OUT/bench_decode.log" | grep -v '^{'
