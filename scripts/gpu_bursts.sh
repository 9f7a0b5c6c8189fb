#!/usr/bin/env bash
# End-to-end vLLM bursts on a GPU host (after `source .gpu/install.sh .gpu`), one engine per arm:
#   bash scripts/gpu_bursts.sh MODEL_DIR "auto fp8 kvarn_k4v2_g128" [args for bench_vllm_bursts.py]
# LANES="0 1" runs the arms in parallel, one GPU each (round robin); LANES="0,1" with --tp 2 gives
# every arm both GPUs. Logs and bursts_<arm>.json go to $OUT (default gpu_results).
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=$1; ARMS=($2); shift 2
OUT="${OUT:-gpu_results}"; mkdir -p "$OUT"
LANES=(${LANES:-0})
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2  # the vllm.general_plugins entry point
lane() {  # lane index -> run its arms one after the other
  local i=$1 j; shift
  for ((j = i; j < ${#ARMS[@]}; j += ${#LANES[@]})); do
    local arm=${ARMS[$j]}
    CUDA_VISIBLE_DEVICES=${LANES[$i]} timeout "${ARM_TIMEOUT:-900}" python3 benchmarks/gpu/bench_vllm_bursts.py \
      "$MODEL" "$arm" --json "$OUT/bursts_$arm.json" "$@" > "$OUT/bursts_$arm.log" 2>&1
    echo "== $arm (GPU ${LANES[$i]}) rc=$?"
    grep -E "KV cache size|kvarn: |RESULT|Error|error:" "$OUT/bursts_$arm.log" | tail -8
  done
}
for ((i = 0; i < ${#LANES[@]}; i++)); do lane "$i" "$@" & done
wait
