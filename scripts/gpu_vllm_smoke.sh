#!/bin/bash
# On the GPU host, after `source .gpu/install.sh .gpu` printed "vllm ready":
#   bash scripts/gpu_vllm_smoke.sh [MODEL_DIR] [extra args for gpu_vllm_smoke.py]
# Installs kvarn (no deps) and runs the smoke test for kvarn_k4v2_g128 and bf16, one process each.
set -uo pipefail
MODEL=${1:-src/kvarn/data/models/qwen3-8b}; shift || true
OUTDIR=${OUT:-gpu_results}; mkdir -p "$OUTDIR"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
python3 -c "import vllm, kvarn; print('vllm', vllm.__version__, 'kvarn', kvarn.__version__)"
for dt in ${DTYPES:-kvarn_k4v2_g128 auto}; do
  timeout 280 python3 scripts/gpu_vllm_smoke.py "$MODEL" "$dt" "$@" > "$OUTDIR/smoke_$dt.log" 2>&1
  echo "== $dt rc=$?"
  grep -E "KV cache size|kvarn: |RESULT|Error|error:|Traceback" "$OUTDIR/smoke_$dt.log" | grep -v "^$" | tail -12
done
