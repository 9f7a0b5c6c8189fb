#!/usr/bin/env bash
# Call 3 of 2026-12-01r: the Gluon path's three launches chained by programmatic dependent launch (p1) against plain
# stream order (p0): the Gluon tests (both), per-kernel and CUDA-graph times at five shapes, benchmark (a) for kvarn.
# The p0/p1 variants and GLUON_PDL were an experiment, removed after this call (README section 3): this script
# needs that code (the launcher's GLUON_PDL switch and the kernels' PDL constexprs) to run again.
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-lop3-2026-12-01r/call3.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
timeout 150 python3 -m pytest tests/gpu/test_kernels_decode_attention.py -m gpu -q -p no:cacheprovider -k "gluon" \
  > "$OUT/tests_gluon.log" 2>&1
tail -3 "$OUT/tests_gluon.log"
cd benchmarks/gpu
timeout 240 python3 probe_gluon_parts.py --shapes 32x8192,128x8192,256x8192,768x1152,8x32768 \
  --pool-variants w4e1l1p0,w4e1l1p1,w4e1l1p0,w4e1l1p1 --json "$OUT/pdl.json" > "$OUT/pdl.log" 2>&1
grep parts "$OUT/pdl.log" | python3 -c "
import json, sys
for line in sys.stdin:
    r = json.loads(line.split(' ', 1)[1])
    print(r['batch'], r['context'], r['pool_variant'], 'graph', r['graph_us'], {k[:20]: v for k, v in r['kernels'].items()})
"
tail -3 "$OUT/pdl.log" | grep -i error
timeout 200 python3 bench_decode.py --formats kvarn --batches 32 128 256 --contexts 8192 32768 131072 \
  --json "$OUT/bench_decode.json" > "$OUT/bench_decode.log" 2>&1
tail -11 "$OUT/bench_decode.log"
