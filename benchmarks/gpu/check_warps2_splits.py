"""The launcher's split-K choice with ``splits_for_two_warps`` against the wave model's alone (Qwen3-8B layer).

  python benchmarks/gpu/check_warps2_splits.py --json out.json
Per (batch, context[, table width]): the wave model's S (choose_num_splits; the warps then follow the launch
size) and the launcher's default (more splits where they reach the 2-warp threshold), each timed as the median
us of a CUDA-graph replay, L2 flushed, on one state; ``speedup`` = wave model's time / default's. The wide rows
pad the block table to 256 tiles (max_model_len 32K) while the contexts stay short, as vLLM's static tables do.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from bench_decode import kvarn_state
from gpu_timing import graph_ms
from kvarn.config import KvarnConfig
from kvarn.kernels import choose_decode_warps, choose_num_splits, kvarn_decode_attention
from kvarn.kernels.decode_attention import splits_for_two_warps

FULL = [(128, 2048), (128, 8192), (128, 32768), (64, 8192), (64, 32768), (100, 4096), (48, 16384), (140, 8192),
        (32, 8192), (32, 32768), (40, 4096)]
WIDE = [(128, 1152), (64, 1152), (100, 2048), (140, 4096)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--width", type=int, default=256, help="table width in tiles of the wide rows")
    a = ap.parse_args(argv)
    cfg = KvarnConfig.from_name("kvarn_k4v2_g128", head_dim=128)
    sms, hk = torch.cuda.get_device_properties(0).multi_processor_count, 8
    rows = []
    for bsz, ctx, width in [(b, c, None) for b, c in FULL] + [(b, c, a.width) for b, c in WIDE]:
        st, _ = kvarn_state(bsz, ctx, hk, cfg)
        tiles = st["block_table"].shape[1]
        if width:
            table = st["block_table"]
            st["block_table"] = torch.zeros(bsz, width, dtype=torch.int32, device="cuda")
            st["block_table"][:, :tiles] = table
            tiles = width
        q = torch.randn(bsz, 32, 128, device="cuda", dtype=torch.bfloat16)
        seq = torch.full((bsz,), ctx, dtype=torch.int32, device="cuda")
        s_wave = choose_num_splits(bsz, hk, tiles, sms)
        s_def = splits_for_two_warps(bsz, hk, tiles, sms, s_wave)
        row = {"batch": bsz, "context": ctx, "table_width": tiles,
               "wave_model": {"splits": s_wave, "warps": choose_decode_warps(bsz * hk * s_wave, sms)},
               "default": {"splits": s_def, "warps": choose_decode_warps(bsz * hk * s_def, sms)}}
        for name, kw in (("wave_model", dict(num_splits=s_wave)), ("default", {})):
            us = 1e3 * graph_ms(lambda: kvarn_decode_attention(q, seq_lens=seq, scale=0.088, cfg=cfg, **kw, **st))
            row.setdefault(name, {})["us"] = round(us, 2)
        row["speedup"] = round(row["wave_model"]["us"] / row["default"]["us"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
        del st
        torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
