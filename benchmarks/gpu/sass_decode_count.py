"""Offline SASS census of the fused decode kernel (no GPU needed): shared memory, spill instructions and
instruction counts of ``_kvarn_decode_kernel`` compiled for sm_90 at the Qwen3-8B shape.

Needs a Triton wheel that ships ptxas and cuobjdump (the dev box's Triton 3.9 does; the H200 runs 3.6, whose
code differs in detail, so compare variants here, time them there).

    python benchmarks/gpu/sass_decode_count.py                      # the launcher's defaults (4 warps)
    python benchmarks/gpu/sass_decode_count.py num_warps=2          # its large-launch setting (168 registers,
                                                                     # transposed record pass; SW=0: not)
    python benchmarks/gpu/sass_decode_count.py maxnreg=None QP=16   # variants (launch options or kernel
                                                                     # constexprs), one line each
"""
from __future__ import annotations

import collections
import sys

import triton
from sass_layout_probe import sass_instructions
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kvarn.config import KvarnConfig
from kvarn.kernels._common import (DECODE_AHEAD, DECODE_POOL_BN, DECODE_PREFETCH, DECODE_ROTF, DECODE_SWAP, DECODE_TRIM,
                                   layout_constexprs, prefetch_lanes)
from kvarn.kernels.decode_attention import DECODE_REGS, choose_decode_swap
from kvarn.kernels.decode_kernel import _kvarn_decode_kernel

PTRS = {"q_ptr": "*bf16", "sgn_ptr": "*bf16", "sgo_ptr": "*bf16", "kv_ptr": "*u8", "kvh_ptr": "*fp16",
        "pk_ptr": "*fp16", "pv_ptr": "*fp16", "b2s_ptr": "*i32", "bt_ptr": "*i32", "sl_ptr": "*i32",
        "o_ptr": "*bf16", "ml_ptr": "*fp32", "qs_ptr": "*fp32"}


def compile_decode(opts: dict) -> dict:
    """Compile one specialization; returns shared bytes, opcode and spill counts, and the record loop's census."""
    k = _kvarn_decode_kernel
    cfg = KvarnConfig.from_name("kvarn_k4v2_g128")
    const = dict(HK=8, QPK=4, QP=4, BN=128, PBN=min(DECODE_POOL_BN or 128, 128), SPLIT=False, POOL_BF16=False,
                 UPCAST=False, IUP=False, ALL_POOL=False, TPR=1,
                 ROT=True, ASM=True, PREF=DECODE_PREFETCH, AHD=DECODE_AHEAD, TS=False,  # the launcher's defaults
                 TRIM=DECODE_TRIM, RF=DECODE_ROTF, NOREC=False, PVE=False,
                 PL=prefetch_lanes(cfg), **layout_constexprs(cfg))
    launch = dict(num_warps=4, num_stages=1, maxnreg="auto")  # the small-launch default; num_warps=2: large
    for key, v in opts.items():
        (launch if key in launch else const)[key] = v
    if launch["maxnreg"] == "auto":  # as the launcher: the registers that go with the warps
        launch["maxnreg"] = DECODE_REGS.get(launch["num_warps"])
    const.setdefault("SW", choose_decode_swap(launch["num_warps"], DECODE_SWAP))  # and the transposed pass
    if launch["maxnreg"] is None:
        launch.pop("maxnreg")
    sig = {}
    for name in k.arg_names:
        if name in PTRS:
            sig[name] = PTRS[name]
        elif name in const:
            sig[name] = "constexpr"
        elif name.startswith(("q_mult", "o_mult", "pool_")):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    cst = {(k.arg_names.index(n),): v for n, v in const.items()}
    # as Triton specializes a launch: pointers and the strides (multiples of 16 at this shape) 16-divisible
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(k.arg_names)
             if n.endswith("_ptr") or (n.startswith("stride_") and n != "stride_os")}
    ck = triton.compile(ASTSource(fn=k, signature=sig, constexprs=cst, attrs=attrs), target=GPUTarget("cuda", 90, 32),
                        options=launch)
    ins = sass_instructions(ck, "sass_decode_count")  # (address, opcode, branch target)
    ops = collections.Counter(op.split(".")[0] for _, op, _ in ins)
    # loops = backward branches; the first one is the record pass (pass 1)
    loops = [(tgt, a) for a, op, tgt in ins if tgt is not None and tgt < a]
    first = None
    if loops:
        lo, hi = loops[0]
        body = [op for a, op, _ in ins if lo <= a <= hi]
        mem = collections.Counter(op for op in body if op.startswith(("LDG", "LDS", "STS", "LDL", "STL", "LDSM")))
        first = dict(instructions=len(body), hmma=sum(op.startswith("HMMA") for op in body),
                     bar=sum(op.startswith("BAR") for op in body), mem=dict(mem))
    md = ck.metadata
    return dict(smem=md.shared, total=sum(ops.values()), spill_ops=ops.get("LDL", 0) + ops.get("STL", 0),
                record_loop=first)


if __name__ == "__main__":
    variants = sys.argv[1:] or ["default"]
    for v in variants:
        opts = {}
        if v != "default":
            for kv in v.split(","):
                key, val = kv.split("=")
                opts[key] = None if val == "None" else int(val)
        print(v, compile_decode(opts), flush=True)
