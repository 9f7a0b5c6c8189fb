"""Where the time of one decode layer call goes, per GPU kernel: the Gluon path (KVARN_DECODE_GLUON) and the
Triton kernel on benchmark (a)'s state, from torch.profiler's CUDA activity (eager calls after a warm-up; kernel
time on the GPU only, launch gaps not counted). Prints per shape and path: us per call per kernel name.

    cd benchmarks/gpu && python3 probe_gluon_parts.py [--shapes 256x8192,768x1152] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch
from bench_decode import kvarn_state
from torch.profiler import ProfilerActivity, profile

from kvarn.config import KvarnConfig
from kvarn.kernels import kvarn_decode_attention


def kernel_us(fn, iters: int = 20) -> dict:
    """{kernel name: us per call} over ``iters`` eager calls of fn (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    tot = defaultdict(float)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            tot[ev.name[:60]] += ev.device_time / iters
    return {k: round(v, 1) for k, v in sorted(tot.items(), key=lambda kv: -kv[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="256x8192,768x1152,128x8192,32x8192")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    cfg = KvarnConfig.from_name("kvarn_k4v2_g128", head_dim=128)
    out = []
    for shp in a.shapes.split(","):
        bsz, ctx = map(int, shp.split("x"))
        st, _ = kvarn_state(bsz, ctx, 8, cfg)
        q = torch.randn(bsz, 32, 128, device="cuda", dtype=torch.bfloat16)
        seq = torch.full((bsz,), ctx, dtype=torch.int32, device="cuda")
        for gl in (False, True):
            def call(q=q, seq=seq, gl=gl, st=st):
                return kvarn_decode_attention(q, seq_lens=seq, scale=128 ** -0.5, cfg=cfg, gluon=gl, **st)

            parts = kernel_us(call)
            res = {"batch": bsz, "context": ctx, "gluon": gl, "total_us": round(sum(parts.values()), 1),
                   "kernels": parts}
            print("parts", json.dumps(res), flush=True)
            out.append(res)
        del st
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
