#!/usr/bin/env bash
# Call 5 of 2026-12-01q: the Gluon record pass with 3 cp.async stages (two tiles in flight, 44 KB of shared memory,
# 5 programs per SM) against 2 (one tile, 29.7 KB, 6 per SM): tests with either, then gluon_records.py with either.
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-gluon-2026-12-01q/call5.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
for ns in 2 3; do
  KVARN_DECODE_GLUON_STAGES=$ns timeout 150 python3 -m pytest tests/gpu/test_kernels_decode_attention.py -m gpu -q \
    -p no:cacheprovider -k "gluon or pool_splits" > "$OUT/tests_ns$ns.log" 2>&1
  tail -2 "$OUT/tests_ns$ns.log"
done
cd benchmarks/gpu
for ns in 2 3; do
  KVARN_DECODE_GLUON_STAGES=$ns timeout 150 python3 gluon_records.py \
    --shapes 32x8192,32x32768,64x8192,128x8192,256x8192,768x1152,768x2048,8x32768 --json "$OUT/ns$ns.json" > "$OUT/ns$ns.log" 2>&1
done
python3 - "$OUT/ns2.json" "$OUT/ns3.json" <<'PY'
import json, sys
a, b = (json.load(open(f))["points"] for f in sys.argv[1:])
for p, q in zip(a, b):
    print(p["batch"], p["context"], "triton", p["triton"]["us"], q["triton"]["us"], "gluon NS2", p["gluon"]["us"],
          f"({p['gluon']['pct_copy']}%)", "NS3", q["gluon"]["us"], f"({q['gluon']['pct_copy']}%)", "diff", q["gluon"]["rel_diff"])
PY
