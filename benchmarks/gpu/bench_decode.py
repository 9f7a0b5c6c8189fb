"""Decode-attention microbenchmark on one GPU: kvarn (fused, packed tiles) vs bf16 and fp8 caches.

One attention layer, Qwen3-8B geometry by default (Hq 32, Hk 8, D 128), uniform context per
request. Formats (all paged, block = G = 128 tokens, same Triton kernel structure):
  kvarn     kvarn_k4v2_g128 records; sink (block 0) and tail (last block) as fp16 pool rows;
            num_splits automatic. kvarn_s1 = the same forced single-stage (no split-K).
  bf16      bf16 paged cache [blocks, G, Hk, D] read by the same kernel's pool path (split-K auto)
  fp8       fp8-e4m3 paged cache, same path (upcast to fp16 in registers)
  sdpa      torch SDPA, FlashAttention backend, bf16, contiguous per-request K/V (not paged)
Each call is captured in a CUDA graph (q rotation, kernel(s), combine, un-rotation all inside)
and timed by triton.testing.do_bench (median, L2 flushed between replays). GB/s counts the cache
bytes a call must read (records + pool rows for kvarn; K+V for bf16/fp8) and is compared with
the measured device copy rate (read + write).

  python benchmarks/gpu/bench_decode.py --json out.json [--batches 1 8 32 128 256]
      [--contexts 2048 8192 32768 131072] [--sweep]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

from gpu_timing import copy_rate_gbs, device_info, graph_ms
from kvarn.config import KvarnConfig
from kvarn.kernels import decode_launch_shape, kvarn_decode_attention
from kvarn.kernels._common import DECODE_GLUON
from kvarn.kernels.decode_gluon import gluon_applies


def kvarn_state(bsz, ctx, hk, cfg, fp16_sink=True):
    """Random kvarn cache: codes uniform, scales in [0.01, 0.11] (finite fp16), sink (unless not fp16_sink:
    KVARN_SINK=quantized) and tail in the pool."""
    g, d, r = cfg.group, cfg.head_dim, cfg.record_bytes
    nbp = ctx // g
    nb = bsz * nbp
    cache = torch.randint(0, 256, (nb, hk, r), dtype=torch.uint8, device="cuda")
    for name, (off, ln) in cfg.offsets.items():
        if name.endswith("codes"):
            continue
        sc = cache[:, :, off:off + ln].view(torch.float16)
        sc.copy_(torch.rand(sc.shape, device="cuda", dtype=torch.float16) * 0.1 + 0.01)
    pool_k = torch.randn(2 * bsz, g, hk, d, device="cuda", dtype=torch.float16)
    pool_v = torch.randn_like(pool_k)
    b2s = torch.full((nb,), -1, dtype=torch.int32, device="cuda")
    first = torch.arange(bsz, device="cuda") * nbp
    if fp16_sink:
        b2s[first] = (2 * torch.arange(bsz, device="cuda")).int()
    if nbp > 1 or not fp16_sink:
        b2s[first + nbp - 1] = (2 * torch.arange(bsz, device="cuda") + 1).int()
    table = torch.arange(nb, dtype=torch.int32, device="cuda").view(bsz, nbp)
    n_pool = min(2, nbp) if fp16_sink else 1
    bytes_read = bsz * hk * ((nbp - n_pool) * r + n_pool * g * d * 2 * 2)
    return dict(kv_cache=cache, pool_k=pool_k, pool_v=pool_v, block_to_slot=b2s, block_table=table), bytes_read


def dense_state(bsz, ctx, hk, cfg, dtype):
    """A whole paged cache in a bf16/fp8 'pool': every block is a pool slot (block_to_slot = id)."""
    g, d = cfg.group, cfg.head_dim
    nb = bsz * (ctx // g)
    if dtype == torch.bfloat16:
        pool_k = torch.randn(nb, g, hk, d, device="cuda", dtype=dtype)
        pool_v = torch.randn(nb, g, hk, d, device="cuda", dtype=dtype)
    else:  # random fp8-e4m3 bytes with the top exponent bit cleared: finite, |x| < 2, no bf16 temporary
        pool_k = (torch.randint(0, 256, (nb, g, hk, d), dtype=torch.uint8, device="cuda") & 0xBF).view(dtype)
        pool_v = (torch.randint(0, 256, (nb, g, hk, d), dtype=torch.uint8, device="cuda") & 0xBF).view(dtype)
    dummy = torch.zeros(1, hk, cfg.record_bytes, dtype=torch.uint8, device="cuda").expand(nb, hk, cfg.record_bytes)
    b2s = torch.arange(nb, dtype=torch.int32, device="cuda")
    table = b2s.view(bsz, ctx // g)
    bytes_read = bsz * ctx * hk * d * 2 * pool_k.element_size()
    return dict(kv_cache=dummy, pool_k=pool_k, pool_v=pool_v, block_to_slot=b2s, block_table=table,
                all_pool=True), bytes_read


def run_point(bsz, ctx, args, cfg, copy_gbs, formats, kp=None, pp=None):
    """kp / pp: extra kernel parameters (block_n, num_warps, ...) for kvarn / the bf16-fp8 pool path."""
    kp, pp = kp or {}, pp or {}
    hq, hk, d = args.hq, args.hk, cfg.head_dim
    q = torch.randn(bsz, hq, d, device="cuda", dtype=torch.bfloat16)
    seq = torch.full((bsz,), ctx, dtype=torch.int32, device="cuda")
    scale = 1 / math.sqrt(d)
    res = {"batch": bsz, "context": ctx}
    budget = args.mem_gb * 1e9

    def record(name, ms, nbytes, extra=None):
        gbs = nbytes / (ms * 1e-3) / 1e9
        res[name] = {"us": round(ms * 1e3, 2), "gbs": round(gbs, 1), "pct_copy": round(100 * gbs / copy_gbs, 1),
                     "bytes": nbytes, **(extra or {})}

    if {"kvarn", "kvarn_s1"} & formats and bsz * ctx * hk * cfg.bytes_per_token < budget:
        st, nbytes = kvarn_state(bsz, ctx, hk, cfg)
        gluon = kp.get("gluon", DECODE_GLUON) and gluon_applies(cfg, q.shape[1] // hk, 1, False, q.device)
        splits, warps = decode_launch_shape(bsz, hk, ctx // cfg.group,
                                            torch.cuda.get_device_properties(0).multi_processor_count,
                                            kp.get("num_splits"), kp.get("num_warps"), gluon=gluon)
        warps = 2 if gluon else warps  # the Gluon programs' warps
        if "kvarn" in formats:
            out = kvarn_decode_attention(q, seq_lens=seq, scale=scale, cfg=cfg, **st, **kp)
            assert torch.isfinite(out).all()
            record("kvarn", graph_ms(lambda: kvarn_decode_attention(q, seq_lens=seq, scale=scale, cfg=cfg, **st, **kp)),
                   nbytes, {"splits": splits, "warps": warps})
        if "kvarn_s1" in formats and splits > 1:
            record("kvarn_s1", graph_ms(lambda: kvarn_decode_attention(q, seq_lens=seq, scale=scale, cfg=cfg,
                                                                       num_splits=1, **st, **kp)), nbytes)
        del st
        torch.cuda.empty_cache()
    for name, dt in (("bf16", torch.bfloat16), ("fp8", torch.float8_e4m3fn)):
        if name not in formats and not (name == "bf16" and "sdpa" in formats):
            continue
        if bsz * ctx * hk * d * 2 * (2 if dt == torch.bfloat16 else 1) > budget:
            continue
        st, nbytes = dense_state(bsz, ctx, hk, cfg, dt)
        if name in formats:
            out = kvarn_decode_attention(q, seq_lens=seq, scale=scale, cfg=cfg, **st, **pp)
            assert torch.isfinite(out).all()
            record(name, graph_ms(lambda: kvarn_decode_attention(q, seq_lens=seq, scale=scale, cfg=cfg, **st, **pp)),
                   nbytes)
        if name == "bf16" and "sdpa" in formats:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            kk = st["pool_k"].view(bsz, ctx, hk, d).transpose(1, 2)
            vv = st["pool_v"].view(bsz, ctx, hk, d).transpose(1, 2)
            q4 = q.view(bsz, hq, 1, d)

            def sdpa():
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                    return torch.nn.functional.scaled_dot_product_attention(q4, kk, vv, scale=scale, enable_gqa=True)
            try:
                record("sdpa", graph_ms(sdpa), nbytes)
            except Exception as e:  # noqa: BLE001 - report, keep benchmarking
                res["sdpa"] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
        del st
        torch.cuda.empty_cache()
    return res


def sweep(args, cfg, copy_gbs):
    """Tuning sweep. Returns (rows, best kernel params for 'kvarn' and for the bf16/fp8 pool path),
    the best being the fastest at (B=32, 8K) for kvarn and (B=32, 8K) bf16 for the pool path."""
    rows, hk = [], args.hk
    kv = [dict(block_n=128, num_warps=4, num_stages=ns, maxnreg=mr) for ns in (1, 2, 3) for mr in (128, 168)]
    kv += [dict(block_n=128, num_warps=8, num_stages=2, maxnreg=mr) for mr in (128, 168)]
    plan = [
        ("kvarn", 32, 8192, kv),
        ("bf16", 32, 8192, [dict(block_n=bn, num_warps=4, num_stages=2) for bn in (64, 128)]),
        ("kvarn", 32, 8192, [dict(num_splits=s) for s in (1, 4)]),
        ("kvarn", 1, 32768, [dict(num_splits=s) for s in (16, 32, 64)]),
        ("kvarn", 8, 32768, [dict(num_splits=s) for s in (1, 4, 16)]),
    ]
    best = {"kvarn": ({}, float("inf")), "bf16": ({}, float("inf"))}
    for fmt, bsz, ctx, params in plan:
        if fmt == "kvarn":
            st, nbytes = kvarn_state(bsz, ctx, hk, cfg)
        else:
            st, nbytes = dense_state(bsz, ctx, hk, cfg, torch.bfloat16)
        q = torch.randn(bsz, args.hq, cfg.head_dim, device="cuda", dtype=torch.bfloat16)
        seq = torch.full((bsz,), ctx, dtype=torch.int32, device="cuda")
        for p in params:
            row = {"format": fmt, "batch": bsz, "context": ctx, **p}
            call = {**best[fmt][0], **p} if "num_splits" in p else p  # split sweep on the tuned kernel
            try:
                ms = graph_ms(lambda: kvarn_decode_attention(q, seq_lens=seq, scale=0.088, cfg=cfg, **st, **call))
                gbs = nbytes / (ms * 1e-3) / 1e9
                row.update(us=round(ms * 1e3, 2), gbs=round(gbs, 1), pct_copy=round(100 * gbs / copy_gbs, 1))
                if bsz == 32 and "num_splits" not in p and ms < best[fmt][1]:
                    best[fmt] = (p, ms)
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
            rows.append(row)
            print("sweep", row, flush=True)
        del st
        torch.cuda.empty_cache()
    return rows, {k: v[0] for k, v in best.items()}


def print_table(points, copy_gbs):
    fmts = ["kvarn", "kvarn_s1", "bf16", "fp8", "sdpa"]
    print(f"\ncopy rate {copy_gbs:.0f} GB/s (read+write). us per layer call (GB/s, % of copy rate)")
    print(f"{'B':>4} {'ctx':>7} | " + " | ".join(f"{f:>22}" for f in fmts) + " | kv/bf16 kv/fp8")
    for p in points:
        cells = []
        for f in fmts:
            r = p.get(f)
            ok = r and "us" in r
            cells.append(f"{r['us']:>8.1f} ({r['gbs']:>5.0f},{r['pct_copy']:>3.0f}%)" if ok else f"{'-':>22}")
        sp_b = p["bf16"]["us"] / p["kvarn"]["us"] if "us" in p.get("bf16", {}) and "kvarn" in p else float("nan")
        sp_f = p["fp8"]["us"] / p["kvarn"]["us"] if "us" in p.get("fp8", {}) and "kvarn" in p else float("nan")
        print(f"{p['batch']:>4} {p['context']:>7} | " + " | ".join(cells) + f" | {sp_b:6.2f} {sp_f:6.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128, 256])
    ap.add_argument("--contexts", type=int, nargs="+", default=[2048, 8192, 32768, 131072])
    ap.add_argument("--formats", nargs="+", default=["kvarn", "kvarn_s1", "bf16", "fp8", "sdpa"])
    ap.add_argument("--hq", type=int, default=32)
    ap.add_argument("--hk", type=int, default=8)
    ap.add_argument("--preset", default="kvarn_k4v2_g128")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--mem-gb", type=float, default=90.0, help="skip a format whose cache exceeds this")
    ap.add_argument("--sweep", action="store_true",
                    help="first sweep block_n/num_warps/num_stages/splits; the grid then uses the fastest at B=32, 8K")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_decode needs a CUDA GPU", file=sys.stderr)
        return 2
    cfg = KvarnConfig.from_name(args.preset, args.head_dim)
    info = device_info()
    copy_gbs = copy_rate_gbs()
    print(info, f"copy {copy_gbs:.0f} GB/s", flush=True)
    result = {"device": info, "copy_gbs": round(copy_gbs, 1), "config": vars(args), "date": time.strftime(
        "%Y-%m-%d %H:%M UTC", time.gmtime()), "points": [], "sweep": []}
    kp, pp = {}, {}
    if args.sweep:
        result["sweep"], best = sweep(args, cfg, copy_gbs)
        kp, pp = best["kvarn"], best["bf16"]
        result["tuned"] = {"kvarn": kp, "pool_path": pp}
        print("tuned kernel params", result["tuned"], flush=True)
    for ctx in args.contexts:
        for bsz in args.batches:
            t0 = time.time()
            p = run_point(bsz, ctx, args, cfg, copy_gbs, set(args.formats), kp, pp)
            result["points"].append(p)
            print(json.dumps(p), f"({time.time() - t0:.1f}s)", flush=True)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(result, f, indent=1)
    print_table(result["points"], copy_gbs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
