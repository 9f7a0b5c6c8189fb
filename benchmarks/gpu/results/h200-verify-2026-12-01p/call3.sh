#!/usr/bin/env bash
# Call 3: the early-load record tile (swap_ab=2: every load of a tile before its math) against the current
# transposed pass, burst shapes with ragged tails and benchmark (a) shapes; splits=3 at B x Hk = 2,048 (2.59 waves
# of 6 programs per SM at S = 1); then the decode tests on the GPU. OUT=dir bash .../call3.sh
set -u
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
mkdir -p /tmp/r
cd benchmarks/gpu
python3 probe_decode_shapes.py --ragged --no-baselines --variants default,swap=2 \
  --shapes 768x1152,768x2048,384x2048,192x2048 --json /tmp/r/probe_early_ragged.json > /tmp/r/probe_early_ragged.log 2>&1
grep '^point' /tmp/r/probe_early_ragged.log
python3 probe_decode_shapes.py --no-baselines --variants default,swap=2,num_warps=2+splits=3,num_warps=2+splits=3+swap=2 \
  --shapes 256x8192,128x8192,256x32768 --json /tmp/r/probe_early_a.json > /tmp/r/probe_early_a.log 2>&1
grep '^point' /tmp/r/probe_early_a.log
python3 probe_decode_shapes.py --no-baselines --variants default,swap=2 \
  --shapes 32x8192,32x32768,64x8192 --json /tmp/r/probe_early_b32.json > /tmp/r/probe_early_b32.log 2>&1
grep '^point' /tmp/r/probe_early_b32.log
cd ../..
timeout 200 python3 -m pytest tests/gpu/test_kernels_decode_attention.py -m gpu -q -n 4 -p no:cacheprovider > /tmp/r/tests_decode.log 2>&1
tail -3 /tmp/r/tests_decode.log
tar czf "$OUT/call3.tgz" -C /tmp r
