"""Where the time of one decode layer call goes, per GPU kernel: the Gluon path (KVARN_DECODE_GLUON) and the
Triton kernel on benchmark (a)'s state, from torch.profiler's CUDA activity (eager calls after a warm-up; kernel
time on the GPU only, launch gaps not counted). Prints per shape and path: us per call per kernel name, and the
CUDA-graph replay time of the whole call (median, as benchmark (a) times it: ``graph_us``).

``--pool-variants w4e0,w4e1,w8e1b128``: the Gluon path only, once per variant of its pool pass: ``w`` warps per pool
program (decode_attention.POOL_PASS_WARPS), ``e`` V rows loaded with K rows (POOL_PASS_EARLY_V, 0/1), optional ``b``
rows per pool chunk (pool_block_n), optional ``l`` 0/1 (decode_gluon.GLUON_V_FIELDS: V code fields unpacked in
place).

    cd benchmarks/gpu && python3 probe_gluon_parts.py [--shapes 256x8192,768x1152] [--pool-variants ...] [--json F]
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict

import torch
from bench_decode import kvarn_state
from gpu_timing import graph_ms
from torch.profiler import ProfilerActivity, profile

from kvarn.config import KvarnConfig
from kvarn.kernels import decode_attention as da
from kvarn.kernels import decode_gluon as dg
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
    ap.add_argument("--pool-variants", default="")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    cfg = KvarnConfig.from_name("kvarn_k4v2_g128", head_dim=128)
    out = []
    for shp in a.shapes.split(","):
        bsz, ctx = map(int, shp.split("x"))
        st, _ = kvarn_state(bsz, ctx, 8, cfg)
        q = torch.randn(bsz, 32, 128, device="cuda", dtype=torch.bfloat16)
        seq = torch.full((bsz,), ctx, dtype=torch.int32, device="cuda")
        runs = [(gl, None) for gl in (False, True)]
        if a.pool_variants:
            runs = [(True, v) for v in a.pool_variants.split(",")]
        for gl, var in runs:
            kw = {}
            if var:
                m = re.fullmatch(r"w(\d)e(\d)(?:b(\d+))?(?:l(\d))?", var)
                if m is None:
                    raise SystemExit(f"bad variant {var!r}: w<warps>e<0|1>[b<rows>][l<0|1>]")
                w, ev, bn, lop = m.groups()
                da.POOL_PASS_WARPS, da.POOL_PASS_EARLY_V = int(w), ev == "1"
                dg.GLUON_V_FIELDS = lop != "0"
                if bn:
                    kw["pool_block_n"] = int(bn)

            def call(q=q, seq=seq, gl=gl, st=st, kw=kw):
                return kvarn_decode_attention(q, seq_lens=seq, scale=128 ** -0.5, cfg=cfg, gluon=gl, **kw, **st)

            parts = kernel_us(call)
            res = {"batch": bsz, "context": ctx, "gluon": gl, "pool_variant": var,
                   "graph_us": round(1000 * graph_ms(call), 1), "total_us": round(sum(parts.values()), 1),
                   "kernels": parts}
            print("parts", json.dumps(res), flush=True)
            out.append(res)
        del st
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
