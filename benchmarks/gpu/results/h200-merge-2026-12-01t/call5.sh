#!/usr/bin/env bash
# Call 5 of 2026-12-01t (+ .gpu/p1 staged): the final kernels and split rule (Gluon split rule restricted to where
# call 4 measured it faster): the decode tests of the Gluon path and the launch policies.
# Run from the repo root: OUT=dir bash benchmarks/gpu/results/h200-merge-2026-12-01t/call5.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
timeout 170 python3 -m pytest tests/gpu/test_kernels_decode_attention.py -m gpu -q -p no:cacheprovider -n 4 \
  -k "gluon or rotate_q or policy" > "$OUT/tests_gluon.log" 2>&1
tail -3 "$OUT/tests_gluon.log"
