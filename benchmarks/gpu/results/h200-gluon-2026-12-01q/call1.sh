#!/usr/bin/env bash
# Call 1 of 2026-12-01q (H200, no vLLM needed): the Gluon record pass (KVARN_DECODE_GLUON) through the launcher,
# first time on a GPU: its tests, then both decode paths timed by gluon_records.py (fp16 sink, token sink, records only).
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-gluon-2026-12-01q/call1.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > "$OUT/smi.txt"
date -u +%H:%M:%S > "$OUT/times.txt"
timeout 200 python3 -m pytest tests/gpu/test_kernels_decode_attention.py -m gpu -q -p no:cacheprovider -k "gluon or launch_shape" \
  > "$OUT/tests_gluon.log" 2>&1
tail -30 "$OUT/tests_gluon.log"
date -u +%H:%M:%S >> "$OUT/times.txt"
cd benchmarks/gpu
for v in "fp16:" "token:--sink token" "records:--records"; do
  tag=${v%%:*}
  timeout 120 python3 gluon_records.py ${v#*:} --json "$OUT/gluon_$tag.json" > "$OUT/gluon_$tag.log" 2>&1
  echo "== $tag"; tail -8 "$OUT/gluon_$tag.log"
  date -u +%H:%M:%S >> "$OUT/times.txt"
done
