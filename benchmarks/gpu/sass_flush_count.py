"""Offline SASS census of the flush kernel (no GPU needed): registers, spill instructions and the balancing
round's instruction count of ``_flush_kernel`` compiled for sm_90, K and V tiles, at the Qwen3-8B shape
(k4v2_g128, head_dim 128, reference numerics) as ``flush_tiles_layers`` launches it.

Integer arguments are specialized as a real launch specializes them: Triton marks an int divisible by 16
(every stride here) with ``tt.divisibility 16``, and that is what lets it vectorize the pool loads. A
census without it (2026-11-30 morning) showed spills the real kernel does not have.

Needs a Triton wheel that ships ptxas and cuobjdump (the dev box's Triton 3.9 does; the H200 runs 3.6):

    python benchmarks/gpu/sass_flush_count.py               # num_warps 8 and 4
    python benchmarks/gpu/sass_flush_count.py 8 4 16        # any warp counts
"""
from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kvarn.config import KvarnConfig
from kvarn.kernels._common import layout_constexprs
from kvarn.kernels.flush import _flush_kernel, _numerics_constexprs
from sass_layout_probe import sass_instructions

PTRS = {"pk_ptr": "*fp16", "pv_ptr": "*fp16", "kv_ptr": "*u8", "kvh_ptr": "*fp16", "slots_ptr": "*i32",
        "blocks_ptr": "*i32", "clip_ptr": "*fp32", "layers_ptr": "*i32", "addr_ptr": "*i64"}


def registers(ck) -> int:
    """Registers per thread of a compiled kernel (``cuobjdump -res-usage``)."""
    cubin = os.path.join(tempfile.gettempdir(), "sass_flush_count.cubin")
    with open(cubin, "wb") as f:
        f.write(ck.asm["cubin"])
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin")
    out = subprocess.run([os.path.join(bindir, "cuobjdump"), "-res-usage", cubin],
                         capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+)", out)
    return int(m.group(1)) if m else -1


def census(is_v: bool, num_warps: int, cfg: KvarnConfig) -> dict:
    k = _flush_kernel
    raw = cfg.raw_record_bytes
    const = dict(MULTI=True, IS_V=is_v, RAW=raw, PADP2=triton.next_power_of_2(max(cfg.record_bytes - raw, 1)),
                 **_numerics_constexprs(cfg.numerics), **layout_constexprs(cfg))
    sig = {n: PTRS.get(n) or ("constexpr" if n in const else "i32") for n in k.arg_names}
    cst = {(k.arg_names.index(n),): v for n, v in const.items()}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(k.arg_names)
             if n.endswith("_ptr") or n.startswith("stride_")}
    ck = triton.compile(ASTSource(fn=k, signature=sig, constexprs=cst, attrs=attrs), target=GPUTarget("cuda", 90, 32),
                        options=dict(num_warps=num_warps))
    ins = sass_instructions(ck, "sass_flush_count")
    ops = collections.Counter(op.split(".")[0] for _, op, _ in ins)
    loops = [(tgt, a) for a, _, tgt in ins if tgt is not None and tgt < a]
    lo, hi = max(loops, key=lambda x: x[1] - x[0]) if loops else (0, -1)  # the longest loop: the rounds
    body = [op.split(".")[0] for a, op, _ in ins if lo <= a <= hi]
    return {"tile": "V" if is_v else "K", "num_warps": num_warps, "registers": registers(ck),
            "total": sum(ops.values()), "spill_ops": ops.get("LDL", 0) + ops.get("STL", 0),
            "round": len(body), "round_bar": body.count("BAR"), "round_shfl": body.count("SHFL")}


def main(argv: list[str]) -> int:
    cfg = KvarnConfig.from_name("kvarn_k4v2_g128", 128, numerics="reference")
    for w in [int(a) for a in argv] or [8, 4]:
        for is_v in (False, True):
            print(census(is_v, w, cfg), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
