#!/usr/bin/env bash
# Call 1 of 2026-12-01s: before any change (cc80ab6), the Gluon path's split-K factor swept at benchmark (a)'s small
# shapes, and what the pool tiles cost (records_only: every tile a record, the pool pass left with no tiles).
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-poolfuse-2026-12-01s/call1.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
cd benchmarks/gpu
timeout 200 python3 probe_decode_shapes.py --shapes 32x8192,32x32768,8x32768,128x8192 --no-baselines \
  --variants default,splits=3,splits=4,splits=5,splits=8,splits=11 --json "$OUT/splits.json" > "$OUT/splits.log" 2>&1
grep point "$OUT/splits.log" | cut -c1-160
timeout 100 python3 probe_gluon_parts.py --shapes 32x8192,128x8192 --json "$OUT/parts.json" > "$OUT/parts.log" 2>&1
grep parts "$OUT/parts.log" | cut -c1-300
