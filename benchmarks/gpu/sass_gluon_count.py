"""Offline SASS census of the Gluon record kernel (kernels/decode_gluon.py) for sm_90: shared memory, registers,
spill instructions, and the record loop's instruction count and memory operations. No GPU needed, but the kernel
is written for Triton 3.6's Gluon API (the H200's version), so run it with that Triton, e.g.

    pip install --no-deps --target /tmp/t36 triton==3.6.0
    cd benchmarks/gpu && PYTHONPATH=/tmp/t36:../../src python3 sass_gluon_count.py [TS=1] [maxnreg=144] \
        [P=2,PLAST=1,QROT=1]   (the default launch: pool programs after the record splits, q rotated in-kernel;
                                also PBN=64, BF16=1)
"""
from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile

import triton
from sass_layout_probe import sass_instructions
from triton.backends.compiler import GPUTarget

from kvarn.kernels import decode_gluon as g


def census(opts: dict) -> dict:
    if not g.GLUON:
        raise SystemExit(f"Triton {triton.__version__}: the Gluon kernel needs one of {g.GLUON_TRITON_VERSIONS}")
    from triton.experimental.gluon._runtime import GluonASTSource
    k = g._gluon_record_kernel
    lay = g.GLUON_LAYOUT
    from triton.experimental.gluon import language as gl
    const = {"HK": 8, "NW": 2, "TS": int(opts.pop("TS", 0)), "LOP": int(opts.pop("LOP", 1)), "R": lay["R"],
             "K_RS": lay["K_RS"], "V_CODES": lay["V_CODES"], "V_CS": lay["V_CS"], "P": int(opts.pop("P", 0)),
             "PBN": int(opts.pop("PBN", 32)), "PDT": gl.bfloat16 if opts.pop("BF16", 0) else gl.float16,
             "PLAST": int(opts.pop("PLAST", 0)), "QROT": int(opts.pop("QROT", 0)),
             "MERGE": int(opts.pop("MERGE", 0))}
    ptr = {"qs_ptr": "*fp32", "part_ptr": "*fp32", "ml_ptr": "*fp32", "kv_ptr": "*u8",
           "pk_ptr": "*bf16" if const["PDT"] == gl.bfloat16 else "*fp16"}
    ptr["pv_ptr"] = ptr["pk_ptr"]
    if const["QROT"]:  # q in the model's frame (bf16), rotated in the kernel
        ptr["qs_ptr"] = "*bf16"
    ptr["o_ptr"] = "*bf16"
    sig = {n: ("constexpr" if n in const else ptr.get(n, "*i32") if n.endswith("_ptr") else "fp32"
               if n.endswith("_scale") or n in ("q_mult", "o_mult") else "i32") for n in k.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(k.arg_names)
             if n.endswith("_ptr") or n in ("stride_kvb", "stride_btb", "stride_pks", "stride_pkn", "stride_pkh")}
    src = GluonASTSource(fn=k, signature=sig, constexprs={(k.arg_names.index(n),): v for n, v in const.items()},
                         attrs=attrs)
    ck = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=2, **opts))
    ins = sass_instructions(ck, "sass_gluon_count")
    ops = collections.Counter(op.split(".")[0] for _, op, _ in ins)
    loops = [(tgt, a) for a, op, tgt in ins if tgt is not None and tgt < a]  # backward branches
    # the record loop: the one with the most HMMAs (64 per tile); the fused pool programs' chunk loop has 16
    lo, hi = max(loops, key=lambda lh: sum(op.startswith("HMMA") for a, op, _ in ins if lh[0] <= a <= lh[1]))
    body = [op for a, op, _ in ins if lo <= a <= hi]
    spill_in_loop = sum(op.startswith(("LDL", "STL")) for op in body)
    tool = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    res = subprocess.run([tool, "-res-usage", os.path.join(tempfile.gettempdir(), "sass_gluon_count.cubin")], capture_output=True,
                         text=True, check=False).stdout
    regs = next((w.split(":")[1] for w in res.split() if w.startswith("REG:")), "?")
    mem = collections.Counter(op for op in body if op.startswith(("LDG", "LDS", "STS", "LDSM", "BAR")))
    loop = {"instructions": len(body), "hmma": sum(op.startswith("HMMA") for op in body), "spill_ops": spill_in_loop,
            "mem": dict(mem)}
    return {"smem": ck.metadata.shared, "regs": regs, "spill_ops": ops.get("LDL", 0) + ops.get("STL", 0),
            "record_loop": loop}


if __name__ == "__main__":
    for v in sys.argv[1:] or ["default"]:
        opts = {} if v == "default" else {kv.split("=")[0]: int(kv.split("=")[1]) for kv in v.split(",")}
        print(v, census(opts), flush=True)
