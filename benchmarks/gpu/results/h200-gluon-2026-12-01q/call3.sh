#!/usr/bin/env bash
# Call 3 of 2026-12-01q: the Gluon path with the pool pass first (it also writes the rotated q the Gluon pass reads:
# no torch GEMM), its tests, per-kernel times, and a split-K sweep of the Gluon pass at small and mid batch.
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-gluon-2026-12-01q/call3.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
timeout 200 python3 -m pytest tests/gpu/test_kernels_decode_attention.py -m gpu -q -p no:cacheprovider -k "gluon" \
  > "$OUT/tests_gluon.log" 2>&1
tail -5 "$OUT/tests_gluon.log"
cd benchmarks/gpu
timeout 120 python3 probe_gluon_parts.py --json "$OUT/parts.json" > "$OUT/parts.log" 2>&1
grep '"gluon": true' "$OUT/parts.log" | cut -c1-400
timeout 240 python3 gluon_records.py --shapes 32x8192,32x32768,64x8192,128x8192,8x32768,16x8192,256x8192 \
  --splits 0,1,2,3,4,6,8 --json "$OUT/splits.json" > "$OUT/splits.log" 2>&1
python3 - "$OUT/splits.json" <<'PY'
import json, sys
for p in json.load(open(sys.argv[1]))["points"]:
    print(p["batch"], p["context"], "triton", p["triton"]["us"], " ".join(
        f"{k.replace('gluon_s', 'S')}:{v['us']}({v['pct_copy']}%)" for k, v in p.items() if k.startswith("gluon")))
PY
