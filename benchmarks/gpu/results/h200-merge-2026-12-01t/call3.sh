#!/usr/bin/env bash
# Call 3 of 2026-12-01t: with the merge in the Gluon launch, the record split factor S around the policy's choice at
# B = 16-128 (call 2: S = 5 beat the chosen 6 at 32 x 8,192, 93.7 vs 97.3 us), CUDA-graph us per layer call.
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-merge-2026-12-01t/call3.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
cd benchmarks/gpu
show() { grep parts "$1" | python3 -c "
import json, sys
for line in sys.stdin:
    r = json.loads(line.split(' ', 1)[1])
    print(r['batch'], r['context'], r['pool_variant'], 'graph', r['graph_us'], {k[:20]: v for k, v in r['kernels'].items()})
"; }
run() {  # shapes, S values
  v=""; for s in $2; do v="$v,w4e1f32zms$s"; done; v="w4e1f32zm$v,w4e1f32zm$v"
  timeout 150 python3 probe_gluon_parts.py --shapes "$1" --pool-variants "$v" --json "$OUT/s_${1//,/_}.json" > "$OUT/s_${1//,/_}.log" 2>&1
  show "$OUT/s_${1//,/_}.log"; tail -3 "$OUT/s_${1//,/_}.log" | grep -v parts
}
run 32x8192,32x32768,32x131072 "4 5 6"
run 16x8192,16x32768 "3 4 6 8"
run 64x8192,64x32768 "2 3 4"
run 128x8192,100x4096 "1 2 3"
