#!/usr/bin/env bash
# Call 4 of 2026-12-01t: the Gluon path's own split rule (decode_policy.GLUON_PROGRAMS_PER_SM / GLUON_NEXT_SPLIT_GAIN)
# against the Triton kernel's rule at every shape where they differ, CUDA-graph us per layer call (probe_gluon_parts.py:
# w4e1f32zms<S> = the previous choice S, w4e1f32zm = the launcher's new default), twice; the Gluon decode tests;
# benchmark (a). Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-merge-2026-12-01t/call4.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
timeout 150 python3 -m pytest tests/gpu/test_kernels_decode_attention.py -m gpu -q -p no:cacheprovider -n 4 \
  -k "gluon or rotate_q or policy" > "$OUT/tests_gluon.log" 2>&1
tail -4 "$OUT/tests_gluon.log"
cd benchmarks/gpu
show() { grep parts "$1" | python3 -c "
import json, sys
for line in sys.stdin:
    r = json.loads(line.split(' ', 1)[1])
    print(r['batch'], r['context'], r['pool_variant'], 'graph', r['graph_us'], {k[:20]: v for k, v in r['kernels'].items()})
"; }
for sv in 1x131072:64 4x8192:16 4x32768:16 8x8192:8 8x32768:8 12x8192:11 12x32768:11 24x8192:8 24x32768:8 \
          16x2048:4 32x8192:6; do
  shp=${sv%:*}; old=${sv#*:}
  timeout 60 python3 probe_gluon_parts.py --shapes "$shp" --pool-variants "w4e1f32zms$old,w4e1f32zm,w4e1f32zms$old,w4e1f32zm" \
    --json "$OUT/rule_$shp.json" > "$OUT/rule_$shp.log" 2>&1
  show "$OUT/rule_$shp.log"; tail -3 "$OUT/rule_$shp.log" | grep -v parts
done
timeout 100 python3 bench_decode.py --formats kvarn bf16 fp8 --batches 1 8 32 128 256 \
  --contexts 2048 8192 32768 131072 --json "$OUT/bench_decode.json" > "$OUT/bench_decode.log" 2>&1
tail -22 "$OUT/bench_decode.log" | grep -v '^{'
