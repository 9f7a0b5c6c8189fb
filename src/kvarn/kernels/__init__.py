"""Triton kernels of kvarn's GPU path (import triton; never vllm).

  rotate_append    rotate incoming K/V by H_D and write them into the fp16 pool by slot mapping
  flush            balance + RTN + pack complete pool tiles into uint8 records (bit layout of kvarn.config);
                   flush_tiles_layers: all layers' tiles of a step in one launch
  decode_attention fused paged decode over packed tiles + pool rows (GQA, online softmax, split-K)
  decode_gluon     the record pass in Gluon (cp.async staging a tile ahead; default where it applies)
  decode_gluon_pool  the Gluon launch's pool programs (fp16 sink/tail) and in-kernel q rotation
  decode_gluon_merge the Gluon launch's split-K merge (last program per request and KV head, arrival counters)
  decode_policy    launch shapes of decode: split-K factor, warps, transposed pass, pool programs
  prefill          multi-query (chunked-prefill continuation, spec verify) as per-token decode rows

Each launcher validates shapes/dtypes/strides and raises ValueError listing what it expects.
Every kernel is checked against kvarn.reference in tests/gpu/test_kernels_*.py.
"""

from kvarn.kernels.decode_attention import (
    choose_decode_swap,
    choose_decode_warps,
    choose_num_splits,
    choose_pool_splits,
    decode_launch_shape,
    kvarn_decode_attention,
)
from kvarn.kernels.flush import encode_tiles_triton, flush_tiles, flush_tiles_layers
from kvarn.kernels.prefill import kvarn_multiquery_attention
from kvarn.kernels.rotate_append import rotate_append

__all__ = [
    "choose_decode_swap",
    "choose_decode_warps",
    "choose_num_splits",
    "choose_pool_splits",
    "decode_launch_shape",
    "encode_tiles_triton",
    "flush_tiles",
    "flush_tiles_layers",
    "kvarn_decode_attention",
    "kvarn_multiquery_attention",
    "rotate_append",
]
