#!/usr/bin/env bash
# End-to-end vLLM bursts on a GPU host (after `source .gpu/install.sh .gpu`), one engine per arm:
#   bash scripts/gpu_bursts.sh MODEL_DIR "auto fp8 kvarn_k4v2_g128" [args for bench_vllm_bursts.py]
# LANES="0 1" runs the arms in parallel, one GPU each (round robin); LANES="0,1" with --tp 2 gives
# every arm both GPUs. Logs and bursts_<arm>.json go to $OUT (default gpu_results). An arm may carry
# environment settings after a colon, comma-separated, for A/B runs of one format:
#   LANES="0 1" bash scripts/gpu_bursts.sh M "kvarn_k4v2_g128:KVARN_DECODE_PREFETCH=0 kvarn_k4v2_g128:KVARN_DECODE_PREFETCH=1"
# Each arm's log starts and ends with its GPU's clocks, temperature, power and throttle reasons.
set -uo pipefail
cd "$(dirname "$0")/.."
MODEL=$1; ARMS=($2); shift 2
OUT="${OUT:-gpu_results}"; mkdir -p "$OUT"
LANES=(${LANES:-0})
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2  # the vllm.general_plugins entry point
gpu_state() {  # one line: the GPU's clocks, temperature, power and clock-event (throttle) reasons now
  local q=index,clocks.sm,clocks.mem,temperature.gpu,power.draw
  echo "gpu_state $(date -u +%H:%M:%S) $(nvidia-smi -i "${1%%,*}" --format=csv,noheader \
    --query-gpu=$q,clocks_event_reasons.active 2>/dev/null || nvidia-smi -i "${1%%,*}" --format=csv,noheader --query-gpu=$q 2>&1)"
}
lane() {  # lane index -> run its arms one after the other
  local i=$1 j; shift
  for ((j = i; j < ${#ARMS[@]}; j += ${#LANES[@]})); do
    local spec=${ARMS[$j]} arm envs="" tag log
    arm=${spec%%:*}
    [[ $spec == *:* ]] && envs=${spec#*:}
    tag=${spec//[:=,]/_}
    log="$OUT/bursts_$tag.log"
    gpu_state "${LANES[$i]}" > "$log"
    env ${envs//,/ } CUDA_VISIBLE_DEVICES=${LANES[$i]} timeout "${ARM_TIMEOUT:-900}" python3 \
      benchmarks/gpu/bench_vllm_bursts.py "$MODEL" "$arm" --json "$OUT/bursts_$tag.json" "$@" >> "$log" 2>&1
    local rc=$?
    gpu_state "${LANES[$i]}" >> "$log"
    echo "== $spec (GPU ${LANES[$i]}) rc=$rc"
    grep -E "KV cache size|kvarn: |RESULT|Error|error:|^gpu_state" "$log" | tail -10
  done
}
for ((i = 0; i < ${#LANES[@]}; i++)); do lane "$i" "$@" & done
wait
