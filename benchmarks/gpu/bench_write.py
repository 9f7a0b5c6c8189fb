"""Write-path microbenchmark: rotate_append (per step) and flush (per batch of complete tiles).

  python benchmarks/gpu/bench_write.py --json out.json

rotate_append: T new tokens x Hk heads, bf16 in, fp16 pool; GB/s counts K+V read and written.
flush: N pool tiles x Hk heads -> records (K and V tiles: 2*N*Hk tile encodes), both numerics.
Amortized per decode step: each running request completes one tile per layer every G steps, so
a step flushes B/G tiles per layer on average (reported as us per layer per step at batch B).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from gpu_timing import device_info, graph_ms
from kvarn.config import KvarnConfig
from kvarn.kernels import flush_tiles, flush_tiles_layers, rotate_append


def bench_append(t, hk, d, g):
    key = torch.randn(t, hk, d, device="cuda", dtype=torch.bfloat16)
    val = torch.randn_like(key)
    slots = t // g + 2
    pk = torch.empty(slots, g, hk, d, device="cuda", dtype=torch.float16)
    pv = torch.empty_like(pk)
    b2s = torch.arange(slots, dtype=torch.int32, device="cuda")
    smap = torch.randperm(slots * g, device="cuda")[:t]
    ms = graph_ms(lambda: rotate_append(key, val, pk, pv, b2s, smap, g))
    nbytes = t * hk * d * 2 * 2 * 2
    return {"tokens": t, "us": round(ms * 1e3, 2), "gbs": round(nbytes / (ms * 1e-3) / 1e9, 1)}


def bench_flush(n, hk, cfg, num_warps=None):
    g, d = cfg.group, cfg.head_dim
    pk = torch.randn(n, g, hk, d, device="cuda", dtype=torch.float16) * 2
    pv = torch.randn_like(pk) * 0.1
    cache = torch.zeros(n, hk, cfg.record_bytes, dtype=torch.uint8, device="cuda")
    idx = torch.randperm(n, device="cuda").int()
    ms = graph_ms(lambda: flush_tiles(pk, pv, cache, idx, idx, cfg, num_warps=num_warps))
    return {"items": n, "num_warps": num_warps, "records": n * hk, "us": round(ms * 1e3, 2),
            "us_per_record": round(ms * 1e3 / (n * hk), 3)}


def bench_flush_layers(num_layers, per_layer, hk, cfg):
    """One decode step's flush at batch ~ per_layer * G: per_layer tiles in each of num_layers
    layers, all layers in one flush_tiles_layers launch vs one flush_tiles launch per layer."""
    g, d = cfg.group, cfg.head_dim
    pk = [torch.randn(per_layer, g, hk, d, device="cuda", dtype=torch.float16) for _ in range(num_layers)]
    pv = [torch.randn_like(x) * 0.1 for x in pk]
    caches = [torch.zeros(per_layer, hk, cfg.record_bytes, dtype=torch.uint8, device="cuda") for _ in range(num_layers)]
    idx = torch.arange(per_layer, dtype=torch.int32, device="cuda")
    lay = torch.arange(num_layers, dtype=torch.int32, device="cuda").repeat_interleave(per_layer)
    sl = idx.repeat(num_layers)
    one = graph_ms(lambda: flush_tiles_layers(pk, pv, caches, lay, sl, sl, cfg))
    each = graph_ms(lambda: [flush_tiles(pk[i], pv[i], caches[i], idx, idx, cfg) for i in range(num_layers)])
    return {"layers": num_layers, "tiles_per_layer": per_layer, "records": num_layers * per_layer * hk,
            "us_one_launch": round(one * 1e3, 1), "us_per_layer_launches": round(each * 1e3, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hk", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--preset", default="kvarn_k4v2_g128")
    ap.add_argument("--json", default=None)
    ap.add_argument("--numerics", default="improved,reference", help="comma-separated numerics to time the flush with")
    ap.add_argument("--warps", default="default",
                    help="comma-separated flush num_warps to time ('default' = the launcher's choice), e.g. 8,16")
    ap.add_argument("--no-append", action="store_true", help="skip rotate_append")
    args = ap.parse_args(argv)
    warps = [None if w == "default" else int(w) for w in args.warps.split(",")]
    if not torch.cuda.is_available():
        print("bench_write needs a CUDA GPU", file=sys.stderr)
        return 2
    res = {"device": device_info(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "append": [],
           "flush": {}}
    for t in () if args.no_append else (1, 32, 256, 8192):
        res["append"].append(bench_append(t, args.hk, args.head_dim, 128))
        print("append", res["append"][-1], flush=True)
    for num in args.numerics.split(","):
        cfg = KvarnConfig.from_name(args.preset, args.head_dim, numerics=num)
        res["flush"][num] = []
        for n in (1, 32, 256):
            for w in warps:
                res["flush"][num].append(bench_flush(n, args.hk, cfg, w))
                print("flush", num, res["flush"][num][-1], flush=True)
    res["flush_layers"] = []
    for per in (1, 2):
        try:
            res["flush_layers"].append(bench_flush_layers(36, per, args.hk, KvarnConfig.from_name(args.preset,
                                                                                                  args.head_dim)))
        except Exception as e:  # noqa: BLE001 - report, keep going
            res["flush_layers"].append({"tiles_per_layer": per, "error": f"{type(e).__name__}: {str(e)[:200]}"})
        print("flush_layers", res["flush_layers"][-1], flush=True)
    print(f"\n{'rotate_append T':>16} {'us':>9} {'GB/s':>8}")
    for r in res["append"]:
        print(f"{r['tokens']:>16} {r['us']:>9.1f} {r['gbs']:>8.1f}")
    print(f"\n{'flush numerics':>16} {'warps':>6} {'items':>6} {'records':>8} {'us':>9} {'us/record':>10}")
    for num, rows in res["flush"].items():
        for r in rows:
            print(f"{num:>16} {str(r['num_warps']):>6} {r['items']:>6} {r['records']:>8} {r['us']:>9.1f} "
                  f"{r['us_per_record']:>10.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
