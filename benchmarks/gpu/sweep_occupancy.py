"""Occupancy and split-K sweep of the fused kvarn decode kernel on one GPU (Qwen3-8B layer, Hq 32 / Hk 8 / D 128).

Two questions from the v2 analysis (docs/gpu.md): does a different register cap (more or fewer programs
resident per SM; spills at the cap) or 2 warps per program move the latency-bound kernel, and is the automatic
split-K factor (``choose_num_splits``) the fastest one where B * Hk programs do not fill the GPU?
Each point is a CUDA-graph replay timed by do_bench (median, L2 flushed), as in bench_decode.py.

  python benchmarks/gpu/sweep_occupancy.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from bench_decode import kvarn_state
from gpu_timing import device_info, graph_ms
from kvarn.config import KvarnConfig
from kvarn.kernels import choose_num_splits, kvarn_decode_attention

KERNEL_CONFIGS = [dict(num_warps=4, maxnreg=r) for r in (128, 96, 112, 144, None)]
KERNEL_CONFIGS += [dict(num_warps=2, maxnreg=r) for r in (168, None)]
KERNEL_SHAPES = [(32, 8192), (256, 2048), (256, 8192), (512, 2048)]
SPLIT_SHAPES = {(32, 8192): (1, 2, 3, 4, 5, 6, 8), (16, 2560): (1, 2, 3, 4, 5, 7), (64, 2048): (1, 2, 3, 4),
                (8, 8192): (4, 8, 12, 16)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--hq", type=int, default=32)
    ap.add_argument("--hk", type=int, default=8)
    a = ap.parse_args(argv)
    cfg = KvarnConfig.from_name("kvarn_k4v2_g128", head_dim=128)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    auto = {f"{b}x{c}": choose_num_splits(b, a.hk, c // cfg.group, sms) for b, c in SPLIT_SHAPES}

    def timed(bsz, ctx, st, **kw):
        q = torch.randn(bsz, a.hq, 128, device="cuda", dtype=torch.bfloat16)
        seq = torch.full((bsz,), ctx, dtype=torch.int32, device="cuda")
        row = {"batch": bsz, "context": ctx, **kw}
        t0 = time.perf_counter()
        try:
            row["us"] = round(1e3 * graph_ms(lambda: kvarn_decode_attention(q, seq_lens=seq, scale=0.088, cfg=cfg,
                                                                             **st, **kw)), 2)
        except Exception as e:  # noqa: BLE001 - report, keep sweeping
            row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print("point", json.dumps(row), flush=True)

    for bsz, ctx in KERNEL_SHAPES:
        st, _ = kvarn_state(bsz, ctx, a.hk, cfg)
        for kc in KERNEL_CONFIGS:
            timed(bsz, ctx, st, **kc)
        del st
        torch.cuda.empty_cache()
    for (bsz, ctx), splits in SPLIT_SHAPES.items():
        st, _ = kvarn_state(bsz, ctx, a.hk, cfg)
        print(f"auto splits at B={bsz} ctx={ctx}: {auto[f'{bsz}x{ctx}']}", flush=True)
        for s in splits:
            timed(bsz, ctx, st, num_splits=s)
        del st
        torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": device_info(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "auto_splits": auto, "points": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
