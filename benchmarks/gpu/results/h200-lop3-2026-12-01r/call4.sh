#!/usr/bin/env bash
# Call 4 of 2026-12-01r (carries .gpu/p1; vLLM bundle staging): the whole GPU test suite on the final kernels.
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-lop3-2026-12-01r/call4.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
timeout 330 python3 -m pytest tests/gpu -m gpu -q -n 4 -p no:cacheprovider > "$OUT/tests_all.log" 2>&1
tail -4 "$OUT/tests_all.log"
