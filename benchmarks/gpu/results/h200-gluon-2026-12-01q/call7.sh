#!/usr/bin/env bash
# Call 7 of 2026-12-01q: the final launcher, Gluon record pass (default) against the Triton kernel (gluon=0) at
# burst shapes with ragged tails (each request's last tile 1-128 rows), fp16 sink and token sink.
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-gluon-2026-12-01q/call7.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
cd benchmarks/gpu
S=768x1152,768x2048,384x2048,192x2048,64x2048,16x2560,32x8192,64x8192
timeout 150 python3 probe_decode_shapes.py --ragged --no-baselines --variants gluon=0,gluon=1 --shapes $S \
  --json "$OUT/ragged_fp16sink.json" > "$OUT/ragged_fp16sink.log" 2>&1
timeout 150 python3 probe_decode_shapes.py --ragged --tsink --no-baselines --variants gluon=0,gluon=1 --shapes $S \
  --json "$OUT/ragged_tsink.json" > "$OUT/ragged_tsink.log" 2>&1
for f in fp16sink tsink; do
python3 - "$OUT/ragged_$f.json" "$f" <<'PY'
import json, sys
pts = json.load(open(sys.argv[1]))["points"]
by = {}
for p in pts:
    by.setdefault((p["batch"], p["context"]), {})[p["variant"]] = p.get("us", p.get("error"))
for (b, c), v in by.items():
    t, g = v.get("gluon=0"), v.get("gluon=1")
    print(sys.argv[2], b, c, "triton", t, "gluon", g, "x", round(t / g, 3) if isinstance(t, float) and isinstance(g, float) else "-")
PY
done
