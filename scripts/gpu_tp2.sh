#!/usr/bin/env bash
# Tensor parallelism on two GPUs of one host (issue #7): Qwen3-32B shape, dummy weights, TP=2, kvarn vs bf16
# vs fp8 in one run, one engine per arm, both GPUs per arm. On the GPU host, after
# `source .gpu/install.sh .gpu` printed "vllm ready":
#   bash scripts/gpu_tp2.sh                     # ~15 min: 3 engine starts + burst T and burst B per arm
#   ARMS="kvarn_k4v2_g128 auto" bash scripts/gpu_tp2.sh
# Burst T = 512 x (1,536 + 512): about 1M tokens of KV, above bf16's TP=2 capacity (~0.68M), below fp8's and
# kvarn's. Results: $OUT/bursts_<arm>.json (+ logs); the README records them with this command.
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0   # NVLink multicast off (the device library's KINDS.md says why)
export OUT="${OUT:-gpu_results}"
nvidia-smi -L
n=$(python3 -c 'import torch; print(torch.cuda.device_count())')
[ "$n" -ge 2 ] || { echo "gpu_tp2.sh needs 2 GPUs, this host has $n"; exit 2; }
LANES="0,1" ARM_TIMEOUT="${ARM_TIMEOUT:-600}" bash scripts/gpu_bursts.sh src/kvarn/data/models/qwen3-32b \
  "${ARMS:-kvarn_k4v2_g128 auto fp8}" --tp 2 --max-num-seqs "${MAX_NUM_SEQS:-512}" \
  --bursts T,B --burst T=512,1536,512 "$@"
