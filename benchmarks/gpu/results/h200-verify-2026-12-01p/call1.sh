#!/usr/bin/env bash
# Call 1 of 2026-12-01p (H200, no vLLM needed): stall profiles of the default decode launch at two benchmark (a)
# shapes, a register-cap probe and benchmark (a) with the final split rule (the GPU tests: the next call).
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-verify-2026-12-01p/call1.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > "$OUT/smi.txt"
cd benchmarks/gpu
for shape in "256 8192" "32 8192"; do
  tag=${shape// /x}
  timeout 150 ncu --clock-control none --set full -k regex:_kvarn_decode -s 2 -c 1 -o /tmp/rep_$tag \
    python3 ncu_decode.py $shape > "$OUT/ncu_$tag.log" 2>&1
  ncu -i /tmp/rep_$tag.ncu-rep --page source --csv --print-source sass > /tmp/sass_$tag.csv 2>>"$OUT/ncu_$tag.log"
  python3 ncu_stalls.py /tmp/sass_$tag.csv --top 25 > "$OUT/stalls_$tag.txt" 2>&1
  ncu -i /tmp/rep_$tag.ncu-rep --page details --csv > "$OUT/details_$tag.csv" 2>>"$OUT/ncu_$tag.log"
  gzip -c /tmp/sass_$tag.csv > "$OUT/sass_$tag.csv.gz"
  head -40 "$OUT/stalls_$tag.txt"
done
timeout 120 python3 probe_decode_shapes.py --no-baselines --variants default,maxnreg=144,maxnreg=128 \
  --shapes 256x8192,768x1152,128x8192,32x8192 --json "$OUT/probe_regs.json" > "$OUT/probe_regs.log" 2>&1
tail -12 "$OUT/probe_regs.log"
timeout 200 python3 bench_decode.py --formats kvarn bf16 fp8 --json "$OUT/bench_decode.json" > "$OUT/bench_decode.log" 2>&1
tail -25 "$OUT/bench_decode.log"
