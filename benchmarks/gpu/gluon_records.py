"""The Gluon record pass (``KVARN_DECODE_GLUON``, kernels/decode_gluon.py) against the Triton kernel, per layer call.

The spike this grew from (the same tile math with no masks, split-K or pool tiles, all-record caches) is this file
at commit 978c5d6; its H200 numbers are in ``results/h200-verify-2026-12-01p/gluon/``. Here both paths run through
``kvarn_decode_attention`` (gluon=False / True) on benchmark (a)'s state (fp16 sink and tail in the pool, the rest
records; ``--records``: every tile a record) and the table gives us per layer call (CUDA-graph replay, median), the
share of the copy rate, and the relative difference of the two outputs.

    cd benchmarks/gpu && python3 gluon_records.py [--shapes 256x8192,768x1152] [--records] [--splits 0,1,3]
        [--json out.json]

``--splits`` / ``--pool-splits``: split-K factors of the record pass / programs per head of the pool pass to time the
Gluon path at (0 = the launcher's choice, the default), the Triton kernel at its own choice; the speedup is the
first Gluon variant's.
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
    ap.add_argument("--splits", default="0", help="comma-separated S for the Gluon path, 0 = automatic")
    ap.add_argument("--pool-splits", default="0", help="comma-separated pool-pass programs per head, 0 = automatic")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    splits = [int(x) for x in a.splits.split(",")]
    pool_splits = [int(x) for x in a.pool_splits.split(",")]
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
        def call(gluon, ns=None, pp=None, q=q, seq=seq, st=st):
            return kvarn_decode_attention(q, seq_lens=seq, scale=scale, cfg=cfg, gluon=gluon, num_splits=ns,
                                          pool_splits=pp, **st)

        calls = {"triton": lambda: call(False)}
        for ns in splits:
            for pp in pool_splits:
                name = "gluon" + (f"_s{ns}" if ns else "") + (f"_p{pp}" if pp else "")
                calls[name] = lambda ns=ns, pp=pp: call(True, ns or None, pp or None)
        ref = calls["triton"]().float()
        res = {"batch": bsz, "context": ctx, "bytes": nbytes}
        for name, fn in calls.items():
            got = fn().float()
            us = graph_ms(fn) * 1e3
            res[name] = {"us": round(us, 1), "pct_copy": round(100 * nbytes / (us * 1e-6) / 1e9 / copy, 1),
                         "rel_diff": round(((got - ref).norm() / ref.norm()).item(), 5)}
        res["speedup"] = round(res["triton"]["us"] / res[list(calls)[1]]["us"], 3)
        print("point", json.dumps(res), flush=True)
        out["points"].append(res)
        del st
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
