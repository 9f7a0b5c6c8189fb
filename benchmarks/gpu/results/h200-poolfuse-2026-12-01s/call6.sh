#!/usr/bin/env bash
# Call 6 of 2026-12-01s: q rotated inside every Gluon program (fast Walsh-Hadamard transform by lane shuffles) instead
# of by a launch of its own: the Gluon / rotate-q decode tests, per-kernel and CUDA-graph times of the fused path with
# the rotate-q launch (f32zr, call 5's default) and without it (f32z), twice each, then benchmark (a) for kvarn, bf16
# and fp8. Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-poolfuse-2026-12-01s/call6.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
timeout 130 python3 -m pytest tests/gpu/test_kernels_decode_attention.py -m gpu -q -p no:cacheprovider -n 4 \
  -k "gluon or rotate_q" > "$OUT/tests_gluon.log" 2>&1
tail -2 "$OUT/tests_gluon.log"
cd benchmarks/gpu
timeout 150 python3 probe_gluon_parts.py --shapes 32x8192,128x8192,256x8192,768x1152,8x32768 \
  --pool-variants w4e1f32zr,w4e1f32z,w4e1f32zr,w4e1f32z --json "$OUT/qrot.json" > "$OUT/qrot.log" 2>&1
grep parts "$OUT/qrot.log" | python3 -c "
import json, sys
for line in sys.stdin:
    r = json.loads(line.split(' ', 1)[1])
    print(r['batch'], r['context'], r['pool_variant'], 'graph', r['graph_us'], {k[:20]: v for k, v in r['kernels'].items()})
"
tail -2 "$OUT/qrot.log" | grep -v parts
timeout 100 python3 bench_decode.py --formats kvarn bf16 fp8 --batches 1 8 32 128 256 \
  --contexts 2048 8192 32768 131072 --json "$OUT/bench_decode.json" > "$OUT/bench_decode.log" 2>&1
tail -22 "$OUT/bench_decode.log" | grep -v '^{'
