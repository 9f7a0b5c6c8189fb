"""The Gluon record pass (``KVARN_DECODE_GLUON``, kernels/decode_gluon.py) against the Triton kernel, per layer call.

The spike this grew from (the same tile math with no masks, split-K or pool tiles, all-record caches) is this file
at commit 978c5d6; its H200 numbers are in ``results/h200-verify-2026-12-01p/gluon/``. Here both paths run through
``kvarn_decode_attention`` (gluon=False / True) on benchmark (a)'s state (fp16 sink and tail in the pool, the rest
records; ``--records``: every tile a record) and the table gives us per layer call (CUDA-graph replay, median), the
share of the copy rate, and the relative difference of the two outputs.

    cd benchmarks/gpu && python3 gluon_records.py [--shapes 256x8192,768x1152] [--records] [--json out.json]
"""
from __future__ import annotations

import argparse
import json

import torch
from bench_decode import kvarn_state
from gpu_timing import copy_rate_gbs, device_info, graph_ms

from kvarn.config import KvarnConfig
from kvarn.kernels import kvarn_decode_attention


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="256x8192,768x1152,128x8192,32x8192,768x2048")
    ap.add_argument("--records", action="store_true", help="every tile a record (no fp16 sink or tail)")
    ap.add_argument("--sink", default="fp16", choices=("fp16", "token"))
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    cfg = KvarnConfig.from_name("kvarn_k4v2_g128", head_dim=128, sink=a.sink)
    hk, hq, scale = 8, 32, 128 ** -0.5
    copy = copy_rate_gbs()
    out = {"device": device_info(), "copy_gbs": copy, "records_only": a.records, "sink": a.sink, "points": []}
    for shp in a.shapes.split(","):
        bsz, ctx = map(int, shp.split("x"))
        st, nbytes = kvarn_state(bsz, ctx, hk, cfg, fp16_sink=a.sink == "fp16")
        if a.records:
            st["block_to_slot"].fill_(-1)
            nbytes = bsz * hk * (ctx // cfg.group) * cfg.record_bytes
        q = torch.randn(bsz, hq, 128, device="cuda", dtype=torch.bfloat16)
        seq = torch.full((bsz,), ctx, dtype=torch.int32, device="cuda")
        def call(gluon, q=q, seq=seq, st=st):
            return kvarn_decode_attention(q, seq_lens=seq, scale=scale, cfg=cfg, gluon=gluon, **st)

        calls = {"triton": lambda: call(False), "gluon": lambda: call(True)}
        ref, got = calls["triton"]().float(), calls["gluon"]().float()
        res = {"batch": bsz, "context": ctx, "bytes": nbytes,
               "rel_diff": round(((got - ref).norm() / ref.norm()).item(), 5)}
        for name, fn in calls.items():
            us = graph_ms(fn) * 1e3
            res[name] = {"us": round(us, 1), "pct_copy": round(100 * nbytes / (us * 1e-6) / 1e9 / copy, 1)}
        res["speedup"] = round(res["triton"]["us"] / res["gluon"]["us"], 3)
        print("point", json.dumps(res), flush=True)
        out["points"].append(res)
        del st
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
