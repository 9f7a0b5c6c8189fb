"""Where the fused decode kernel's time goes at burst-A shapes (Qwen3-8B layer, Hq 32 / Hk 8 / D 128).

The end-to-end profile (``bench_vllm_bursts.py --profile``) puts kvarn's decode attention at 858 us per
layer at B=768, 1.1K context, as slow as bf16 FA3 and 1.25x fp8 FA3. This probe times, per shape, the
kernel as vLLM runs it (sink and tail tiles in the fp16 pool) against variants, each a CUDA-graph replay
(median, L2 flushed):

  records_only   every tile a packed record (no pool pass): what the sink and tail cost
  block_n=64     pool tiles in two 64-row chunks
  num_stages=2   software-pipelined record loop
  maxnreg=None   compiler's register choice (fewer programs per SM)
  q_rows=16|8|4  the 4 query heads of a KV head padded to 16 / 8 / 4 rows (4 = the default since
                 2026-11-29; Triton pads the MMA itself)
  num_warps=2|4 (maxnreg follows: 168 | 128), maxnreg=96|80   fewer or more, smaller programs per SM
  bf16_pool      the same kernel reading a bf16 paged cache (the byte-bound reference)
  prefetch=0|1|2|4   records requested into L2 that many tiles ahead (2026-11-30: 1 is 1.05-1.11x faster)
  rotf=0|1       rotations of q and the output as two 16-wide products (1) or one [D, D] operand (0)
  trim=0|1       pool tiles at the ends of the range skip the record pass (1) or run it masked (0)
  pool_bn=32|64  pool tiles in chunks of that many rows, only the chunks holding valid rows
  swap=0|1       the record pass transposed (tokens on the MMA's M axis, query rows on N)
  splits=S       split-K factor (default: choose_num_splits)
  gluon=0|1      the record pass by the Triton kernel (0) or the Gluon kernel (1, the default where it applies)
  ahead=1|2      the record loop's block ids / pool-map entries (1) and K scale vectors (2) loaded a tile early
  KEY=V+KEY=V    any mix of the launcher's tuning arguments, e.g. ahead=2+prefetch=1
  --qsink        the sink tile a record (KVARN_SINK=quantized): only the tail in the pool
  --tsink        the same plus position 0 from an fp16 sink row (KVARN_SINK=token)
  base, base:maxnreg=168, maxnreg=168   the current kernel against an earlier one, same launcher:
                 ``--base-kernel FILE`` (e.g. ``git show REV:src/kvarn/kernels/decode_kernel.py > FILE``);
                 ``--base-kernel A,B`` with variants base1[:KEY=V+...], base2[:...] compares several

  python benchmarks/gpu/probe_decode_shapes.py --json out.json
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import sys
import time

import torch

from bench_decode import dense_state, kvarn_state
from gpu_timing import copy_rate_gbs, device_info, graph_ms
from kvarn.config import KvarnConfig
from kvarn.kernels import decode_attention, kvarn_decode_attention

SHAPES = [(768, 1152), (768, 2048), (384, 2048), (16, 2560)]
VARIANTS = {"default": {}, "block_n=64": dict(block_n=64), "num_stages=2": dict(num_stages=2),
            "maxnreg=None": dict(maxnreg=None), "q_rows=16": dict(min_q_rows=16), "q_rows=8": dict(min_q_rows=8),
            "q_rows=4": dict(min_q_rows=4), "num_warps=2": dict(num_warps=2), "maxnreg=96": dict(maxnreg=96),
            "maxnreg=80": dict(maxnreg=80), "maxnreg=168": dict(maxnreg=168), "base": {},
            "base:maxnreg=168": dict(maxnreg=168), "prefetch=0": dict(prefetch=0), "prefetch=1": dict(prefetch=1),
            "prefetch=2": dict(prefetch=2), "prefetch=4": dict(prefetch=4)}


def variant_kwargs(name: str) -> dict:
    """A named variant, or launcher settings joined by '+': ``ahead=2+prefetch=1`` -> {ahead: 2, prefetch: 1}
    (keys: the launcher's tuning arguments; q_rows = min_q_rows; maxnreg=None = the compiler's choice).
    ``baseN[:settings]`` (another kernel file, see base_file) takes the settings after the colon."""
    if name.startswith("base"):
        return variant_kwargs(name.partition(":")[2]) if ":" in name else {}
    if name in VARIANTS:
        return VARIANTS[name]
    keys = {"ahead", "prefetch", "maxnreg", "num_stages", "num_warps", "block_n", "q_rows", "pool_bn", "trim", "rotf",
            "swap", "splits", "gluon"}
    alias = {"q_rows": "min_q_rows", "pool_bn": "pool_block_n", "rotf": "rotate_factored", "swap": "swap_ab",
             "splits": "num_splits"}
    kw = {}
    for part in name.split("+"):
        k, _, v = part.partition("=")
        if k not in keys or not v:
            raise SystemExit(f"unknown variant {name!r}: use one of {', '.join(VARIANTS)} or KEY=VALUE joined by "
                             f"'+' with KEY in {', '.join(sorted(keys))}")
        kw[alias.get(k, k)] = None if v == "None" else int(v)
    return kw


def base_file(files: str | None, name: str) -> str:
    """The file of variant ``base[N][:settings]``: the N-th (default 1st) of the comma-separated --base-kernel files."""
    paths = (files or "").split(",")
    idx = name.partition(":")[0][4:] or "1"
    if not files or not idx.isdigit() or not 1 <= int(idx) <= len(paths):
        raise SystemExit(f"variant {name!r} needs --base-kernel with at least {idx} comma-separated file(s)")
    return paths[int(idx) - 1]


@functools.lru_cache(maxsize=None)
def _load_kernel(path: str | None):
    """``_kvarn_decode_kernel`` of another revision's decode_kernel.py (the launcher's signature), loaded
    once per file so every shape reuses its compiled specializations."""
    if not path:
        raise SystemExit("the base variants need --base-kernel FILE")
    spec = importlib.util.spec_from_file_location("kvarn_decode_kernel_base", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._kvarn_decode_kernel


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--hq", type=int, default=32)
    ap.add_argument("--hk", type=int, default=8)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    ap.add_argument("--shapes", default=None, help="BxCTX,... (default: the burst-A set)")
    ap.add_argument("--base-kernel", default=None,
                    help="decode_kernel.py of other revisions, comma-separated (variants baseN[:KEY=V+...])")
    ap.add_argument("--no-baselines", action="store_true", help="skip records_only and bf16_pool")
    ap.add_argument("--qsink", action="store_true", help="the sink tile a record (KVARN_SINK=quantized): "
                    "only the tail tile in the pool")
    ap.add_argument("--ragged", action="store_true", help="each request's last tile filled 1-128 rows (uniform, "
                    "same draw for every variant) instead of full: contexts CTX-127..CTX")
    ap.add_argument("--tsink", action="store_true", help="as --qsink, plus position 0 of every first block from "
                    "an fp16 sink row (KVARN_SINK=token)")
    a = ap.parse_args(argv)
    shapes = [tuple(int(x) for x in s.split("x")) for s in a.shapes.split(",")] if a.shapes else SHAPES
    variants = {k: variant_kwargs(k) for k in a.variants.split(",")}
    cfg = KvarnConfig.from_name("kvarn_k4v2_g128", head_dim=128, sink="token" if a.tsink else None)
    copy = copy_rate_gbs()
    print(f"copy rate {copy:.0f} GB/s", flush=True)
    rows = []

    def timed(name, bsz, ctx, st, nbytes, **kw):
        q = torch.randn(bsz, a.hq, 128, device="cuda", dtype=torch.bfloat16)
        seq = torch.full((bsz,), ctx, dtype=torch.int32, device="cuda")
        if a.ragged:
            seq -= torch.randint(0, cfg.group, (bsz,), device="cuda",
                                 generator=torch.Generator("cuda").manual_seed(bsz * 100003 + ctx)).int()
        row = {"variant": name, "batch": bsz, "context": ctx, "bytes": nbytes}
        kernel = decode_attention._kvarn_decode_kernel
        if name.startswith("base"):
            decode_attention._kvarn_decode_kernel = _load_kernel(base_file(a.base_kernel, name))
        try:
            us = 1e3 * graph_ms(lambda: kvarn_decode_attention(q, seq_lens=seq, scale=0.088, cfg=cfg, **st, **kw))
            gbs = nbytes / us / 1e3
            row.update(us=round(us, 1), gbs=round(gbs, 1), pct_copy=round(100 * gbs / copy, 1))
        except Exception as e:  # noqa: BLE001 - report, keep probing
            row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
        finally:
            decode_attention._kvarn_decode_kernel = kernel
        rows.append(row)
        print("point", json.dumps(row), flush=True)

    for bsz, ctx in shapes:
        st, nbytes = kvarn_state(bsz, ctx, a.hk, cfg, fp16_sink=not (a.qsink or a.tsink))
        if a.tsink:  # first block b*nbp -> sink row 0 of the (otherwise unused) even slot 2b
            first = torch.arange(bsz, device="cuda") * (ctx // cfg.group)
            st["block_to_slot"][first] = (-2 - 2 * torch.arange(bsz, device="cuda") * cfg.group).int()
        for name, kw in variants.items():
            timed(name, bsz, ctx, st, nbytes, **kw)
        if a.no_baselines:
            continue
        st["block_to_slot"].fill_(-1)  # every tile a record (the state is dropped right after)
        timed("records_only", bsz, ctx, st, bsz * a.hk * (ctx // cfg.group) * cfg.record_bytes)
        del st
        torch.cuda.empty_cache()
        dst, dbytes = dense_state(bsz, ctx, a.hk, cfg, torch.bfloat16)
        timed("bf16_pool", bsz, ctx, dst, dbytes)
        del dst
        torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": device_info(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "copy_gbs": round(copy, 1), "points": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
