#!/bin/bash
# One command for the committed H200 example reports (examples/gpu_h200/): dummy-weight Qwen3-8B shape,
# arms bf16 / fp8 / kvarn_k4v2_g128, workloads burst-decode (KV-memory-bound) and chat (compute-bound).
#
# On the GPU host, from the repository root, after the offline vLLM bundle is installed:
#   source shared/gpu/install.sh .gpu        # prints "vllm ready"
#   python3 -m pip install --no-deps --no-build-isolation -e .   # kvarn (its vllm.general_plugins entry point)
#   bash scripts/gpu_bench_example.sh [OUT_DIR]
# Not yet run: expect tens of minutes (six server starts; engine start measured 66-87 s in shared/baselines.md).
set -euo pipefail
OUT=${1:-examples/gpu_h200}
SHAPE=${SHAPE:-shared/models/qwen3-8b}
MODEL_DIR=${MODEL_DIR:-${TMPDIR:-/tmp}/qwen3-8b-dummy}
PY=${PYTHON:-python3}
mkdir -p "$OUT"

# 1) the shape with a real tokenizer (SmolLM2's; vocab_size set to it) so the OpenAI API serves text
$PY -m kvarn.cli bench dummy-model --shape "$SHAPE" --out "$MODEL_DIR"

COMMON=(--model "$MODEL_DIR" --load-format dummy --device gpu --arms bf16,fp8,kvarn_k4v2_g128
        --slo ttft_ms=2000,tpot_ms=80 --dtype bfloat16 --serve-args "--gpu-memory-utilization 0.90")

# 2) burst-decode: ~256-token prompts, 1,024 output tokens each, all at once. bf16 holds ~600 such
#    sequences (791,792 tokens, shared/baselines.md), so the top levels are KV-memory-bound for bf16 only.
$PY -m kvarn.cli bench "${COMMON[@]}" --workload burst-decode --scale 2 \
    --concurrency 64,128,256,512,1024 --max-num-seqs 1024 --max-model-len 4096 --out "$OUT/burst-decode"

# 3) chat: short prompts and answers; KV memory never binds, so the latency/compute side decides.
$PY -m kvarn.cli bench "${COMMON[@]}" --workload chat --scale 1 --sessions-per-slot 4 \
    --concurrency 1,4,16,64,256 --max-num-seqs 512 --max-model-len 4096 --out "$OUT/chat"

echo "reports: $OUT/burst-decode/bench_burst-decode.html $OUT/chat/bench_chat.html"
