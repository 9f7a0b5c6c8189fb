#!/usr/bin/env bash
# Call 4 of 2026-12-01s: the Gluon path's pool work, five forms at five shapes (per-kernel and CUDA-graph times, every
# form with the one-load combine): Triton pool pass first with 4 / 2 warps per program (w4e1f0 / w2e1f0), pool programs
# in the Gluon launch started before (f32) or after (f32z, f64z) the record splits; then the Gluon / rotate-q tests.
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-poolfuse-2026-12-01s/call4.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
cd benchmarks/gpu
timeout 300 python3 probe_gluon_parts.py --shapes 32x8192,128x8192,256x8192,768x1152,8x32768 \
  --pool-variants w4e1f0,w2e1f0,w4e1f32,w4e1f32z,w4e1f64z,w4e1f0,w4e1f32z --json "$OUT/forms.json" > "$OUT/forms.log" 2>&1
grep parts "$OUT/forms.log" | python3 -c "
import json, sys
for line in sys.stdin:
    r = json.loads(line.split(' ', 1)[1])
    print(r['batch'], r['context'], r['pool_variant'], 'graph', r['graph_us'], {k[:20]: v for k, v in r['kernels'].items()})
"
tail -2 "$OUT/forms.log" | grep -v parts
cd ../..
timeout 120 python3 -m pytest tests/gpu/test_kernels_decode_attention.py -m gpu -q -p no:cacheprovider -n 4 \
  -k "gluon or rotate_q" > "$OUT/tests_gluon.log" 2>&1
tail -2 "$OUT/tests_gluon.log"
