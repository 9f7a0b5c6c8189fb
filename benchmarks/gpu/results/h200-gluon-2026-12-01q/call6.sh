#!/usr/bin/env bash
# Call 6 of 2026-12-01q (carries .gpu/p1; vLLM bundle staging): the whole GPU test suite with the Gluon record pass
# as the launcher's default (KVARN_DECODE_GLUON=1 unset), then the decode tests with KVARN_DECODE_GLUON=0.
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-gluon-2026-12-01q/call6.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
timeout 300 python3 -m pytest tests/gpu -m gpu -q -n 4 -p no:cacheprovider > "$OUT/tests_all.log" 2>&1
tail -4 "$OUT/tests_all.log"
KVARN_DECODE_GLUON=0 timeout 200 python3 -m pytest tests/gpu/test_kernels_decode_attention.py tests/gpu/test_layer_cache_kernels.py \
  -m gpu -q -n 4 -p no:cacheprovider > "$OUT/tests_gluon0.log" 2>&1
tail -3 "$OUT/tests_gluon0.log"
