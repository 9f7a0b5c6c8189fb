#!/bin/bash
# One command for the committed H200 example reports (examples/gpu_h200/): dummy-weight Qwen3-8B shape,
# arms bf16 / fp8 / kvarn_k4v2_g128, workloads burst-decode (KV-memory-bound) and chat (compute-bound),
# one server start per arm for both workloads.
#
# On the GPU host, from the repository root, after the offline vLLM bundle is installed:
#   source .gpu/install.sh .gpu        # prints "vllm ready"
#   python3 -m pip install --no-deps --no-build-isolation -e .   # kvarn (its vllm.general_plugins entry point)
#   bash scripts/gpu_bench_example.sh [OUT_DIR]
# The defaults fit one 10-minute device call: the KV budget is made small with
# --gpu-memory-utilization (UTIL, default 0.30: ~22 GB of KV for bf16, ~220 burst sequences) so that
# burst-decode at 256 concurrent requests is KV-memory-bound for bf16, while chat never is.
# MODEL_DIR: an existing dummy model folder (config + tokenizer) is used as is; otherwise it is made
# from SHAPE with `kvarn bench dummy-model` (needs the default model's tokenizer in the kvarn cache).
set -euo pipefail
OUT=${1:-examples/gpu_h200}
SHAPE=${SHAPE:-src/kvarn/data/models/qwen3-8b}
MODEL_DIR=${MODEL_DIR:-${TMPDIR:-/tmp}/qwen3-8b-dummy}
PY=${PYTHON:-python3}
mkdir -p "$OUT"

# 1) the shape with a real tokenizer (SmolLM2's; vocab_size set to it) so the OpenAI API serves text
[ -f "$MODEL_DIR/tokenizer.json" ] || $PY -m kvarn.cli bench dummy-model --shape "$SHAPE" --out "$MODEL_DIR"

# 2) both workloads against every arm: burst-decode (short prompts, 512 output tokens, all at once) and
#    chat (short prompts and answers)
$PY -m kvarn.cli bench --model "$MODEL_DIR" --load-format dummy --device gpu --arms "${ARMS:-bf16,fp8,kvarn_k4v2_g128}" \
    --workload burst-decode,chat --concurrency "${CONC:-32,256}" --sessions-per-slot 1 --min-sessions 16 \
    --max-num-seqs "${MAX_NUM_SEQS:-256}" --max-model-len 4096 --quality-prompts "${QUALITY_PROMPTS:-8}" \
    --quality-tokens 64 --slo ttft_ms=2000,tpot_ms=80 --dtype bfloat16 \
    --serve-args "--gpu-memory-utilization ${UTIL:-0.30}" --no-progress --out "$OUT"

ls "$OUT"
