#!/usr/bin/env bash
# One command on a CUDA host: kvarn kernel tests, the end-to-end vLLM smoke test (a vLLM engine with
# --kv-cache-dtype kvarn_k4v2_g128 and CUDA graphs generates, then bf16 for comparison; needs vLLM importable,
# e.g. after `source .gpu/install.sh .gpu`), then the write-path and decode-attention microbenchmarks.
# Logs and JSON go to $OUT (the device tool's output folder) or ./gpu_results.
#   bash scripts/gpu_check.sh            # tests + benchmarks (~5-8 min on an H200)
#   QUICK=1 bash scripts/gpu_check.sh    # tests + a reduced decode grid
#   SWEEP=1 bash scripts/gpu_check.sh    # also the block_n / num_warps / split sweeps and the split-rule check
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src:$PWD/benchmarks/gpu${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"

# four workers where pytest-xdist is installed (the whole suite: ~280 s instead of ~10 min on an H200)
xdist=(); if $PY -c "import xdist" > /dev/null 2>&1; then xdist=(-n "${GPU_TEST_WORKERS:-4}"); fi
$PY -m pytest tests/gpu -m gpu -q -rs -p no:cacheprovider "${xdist[@]}" 2>&1 | tee "$OUT/tests.log"
rc_tests=${PIPESTATUS[0]}

# end to end: skipped (and said so) only where vLLM or CUDA is missing; SMOKE=0 skips it on purpose
rc_smoke=skipped
if [ "${SMOKE:-1}" = 0 ]; then
  echo "gpu_check: vLLM smoke test skipped (SMOKE=0)"
elif $PY -c "import torch, vllm; assert torch.cuda.is_available()" > /dev/null 2>&1; then
  OUT="$OUT" bash scripts/gpu_vllm_smoke.sh 2>&1 | tee "$OUT/smoke.log"
  rc_smoke=${PIPESTATUS[0]}
  grep -q "== kvarn_k4v2_g128 rc=0" "$OUT/smoke.log" || rc_smoke=1
else
  echo "gpu_check: vLLM smoke test skipped: vLLM or CUDA not importable here (source .gpu/install.sh .gpu first)"
fi

$PY benchmarks/gpu/bench_write.py --json "$OUT/bench_write.json" 2>&1 | tee "$OUT/bench_write.log"
rc_write=${PIPESTATUS[0]}

args=()
if [ "${QUICK:-0}" = 1 ]; then args+=(--batches 1 32 256 --contexts 2048 32768); fi
if [ "${SWEEP:-0}" = 1 ]; then args+=(--sweep); fi
$PY benchmarks/gpu/bench_decode.py --json "$OUT/bench_decode.json" "${args[@]}" 2>&1 | tee "$OUT/bench_decode.log"
rc_decode=${PIPESTATUS[0]}

rc_split=0
if [ "${SWEEP:-0}" = 1 ]; then  # register cap / warps / split-K grid, and the split rule against the previous one
  $PY benchmarks/gpu/sweep_occupancy.py --json "$OUT/sweep_occupancy.json" 2>&1 | tee "$OUT/sweep_occupancy.log"
  rc_split=${PIPESTATUS[0]}
  $PY benchmarks/gpu/check_split_policy.py --json "$OUT/check_split_policy.json" 2>&1 | tee "$OUT/check_split_policy.log"
  [ "${PIPESTATUS[0]}" = 0 ] || rc_split=1
fi

echo "gpu_check: tests rc=$rc_tests vllm_smoke rc=$rc_smoke bench_write rc=$rc_write bench_decode rc=$rc_decode split rc=$rc_split"
[ "$rc_tests" = 0 ] && [ "$rc_smoke" != 1 ] && [ "$rc_write" = 0 ] && [ "$rc_decode" = 0 ]
