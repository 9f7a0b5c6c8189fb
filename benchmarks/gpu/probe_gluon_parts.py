"""Where the time of one decode layer call goes, per GPU kernel: the Gluon path (KVARN_DECODE_GLUON) and the
Triton kernel on benchmark (a)'s state, from torch.profiler's CUDA activity (eager calls after a warm-up; kernel
time on the GPU only, launch gaps not counted). Prints per shape and path: us per call per kernel name, and the
CUDA-graph replay time of the whole call (median, as benchmark (a) times it: ``graph_us``).

``--pool-variants w4e0,w4e1,w8e1b128``: the Gluon path only, once per variant of its pool pass: ``w`` warps per pool
program (decode_attention.POOL_PASS_WARPS), ``e`` V rows loaded with K rows (POOL_PASS_EARLY_V, 0/1), optional ``b``
rows per pool chunk (pool_block_n), optional ``l`` 0/1 (decode_gluon.GLUON_V_FIELDS: V code fields unpacked in
place), optional ``f`` 0/32/64 (0: the Triton pool pass before the Gluon launch; 32/64: pool programs inside the Gluon
launch with chunks of that many rows, decode_attention.GLUON_POOL_FUSED / GLUON_POOL_BN; default 32), optional ``c``
0/1 (the split-K combine's partials one per loop step / all in one load, decode_attention.COMBINE_ONE_LOAD_MAX; default
1), optional ``z`` (fused path: the pool programs start after the record splits, decode_gluon.GLUON_POOL_LAST; without
it they start first), optional ``r`` (fused path: q rotated by a launch of its own, decode_attention.GLUON_QROT off;
without it every Gluon program rotates q), optional ``m`` (fused path with in-kernel q rotation: the last program
of each (request, KV head) merges the partials, decode_attention.GLUON_MERGE; without it the combine launch merges
them), optional ``s`` / ``p`` (the record splits S / pool programs P per (request, KV head); default: chosen). The
pool-pass settings w, e, b apply to f0 only.

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

COMBINE_MAX, POOL_BN = da.COMBINE_ONE_LOAD_MAX, da.GLUON_POOL_BN  # the defaults, restored by variants without c / f


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
                m = re.fullmatch(r"w(\d)e(\d)(?:b(\d+))?(?:l(\d))?(?:f(\d+))?(?:c(\d))?(z?)(r?)(m?)(?:s(\d+))?(?:p(\d))?", var)
                if m is None:
                    raise SystemExit(f"bad variant {var!r}: w<warps>e<0|1>[b<rows>][l<0|1>][f<0|32|64>][c<0|1>][z][r][m][s<S>][p<P>]")
                w, ev, bn, lop, fu, one, last, rq, mg, ns, npl = m.groups()
                if ns:
                    kw["num_splits"] = int(ns)
                if npl:
                    kw["pool_splits"] = int(npl)
                da.GLUON_MERGE = mg == "m"
                da.GLUON_QROT = rq != "r"
                dg.GLUON_POOL_LAST = last == "z"
                da.COMBINE_ONE_LOAD_MAX = 0 if one == "0" else COMBINE_MAX
                da.POOL_PASS_WARPS, da.POOL_PASS_EARLY_V = int(w), ev == "1"
                dg.GLUON_V_FIELDS = lop != "0"
                da.GLUON_POOL_FUSED = fu != "0"
                da.GLUON_POOL_BN = int(fu) if fu and fu != "0" else POOL_BN
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
