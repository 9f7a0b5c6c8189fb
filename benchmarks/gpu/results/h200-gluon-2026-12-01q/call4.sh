#!/usr/bin/env bash
# Call 4 of 2026-12-01q: the Gluon path with the pool pass split over 1, 2 or 4 programs per head (pool_splits):
# its tests (bf16 and fp16 pools), a sweep of pool_splits, per-kernel times, then benchmark (a) with
# KVARN_DECODE_GLUON=1 and the automatic pool_splits (choose_pool_splits).
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-gluon-2026-12-01q/call4.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
timeout 200 python3 -m pytest tests/gpu/test_kernels_decode_attention.py -m gpu -q -p no:cacheprovider -k "gluon" \
  > "$OUT/tests_gluon.log" 2>&1
tail -5 "$OUT/tests_gluon.log"
cd benchmarks/gpu
timeout 200 python3 gluon_records.py --shapes 32x8192,32x32768,64x8192,128x8192,256x8192,768x1152,8x32768 \
  --pool-splits 1,2,4 --json "$OUT/pool_splits.json" > "$OUT/pool_splits.log" 2>&1
python3 - "$OUT/pool_splits.json" <<'PY'
import json, sys
for p in json.load(open(sys.argv[1]))["points"]:
    print(p["batch"], p["context"], "triton", p["triton"]["us"], " ".join(
        f"{k.replace('gluon_', '')}:{v['us']}({v['pct_copy']}%,{v['rel_diff']})" for k, v in p.items() if k.startswith("gluon")))
PY
KVARN_DECODE_GLUON=1 timeout 200 python3 bench_decode.py --formats kvarn bf16 fp8 --json "$OUT/bench_decode_gluon.json" \
  > "$OUT/bench_decode_gluon.log" 2>&1
tail -22 "$OUT/bench_decode_gluon.log"
