"""Offline probe of the record byte layout's cost in the decode kernel's dots (no GPU needed).

Compiles four small Triton kernels for sm_90 (``triton.compile`` with ``GPUTarget("cuda", 90, 32)``; needs a
Triton wheel that ships ptxas and cuobjdump) and counts SASS opcodes per kernel:
  k_current     K scores from bytes [D, G/2] (tokens along a channel row, the upstream layout): one dot per
                token bit-plane, reduction over channels
  k_transposed  K scores from bytes [G, D/2] (channels along a token row): one dot per channel plane
  v_current     V accumulation from bytes [G, D/4] (channels along a token row, upstream)
  v_transposed  V accumulation from bytes [D, G/4] (tokens along a channel row)
The MMA operand needs 4 consecutive reduction-axis bytes per thread; when the bytes run along the other
axis Triton loads each byte from shared memory alone (LDS.U8).

    python benchmarks/gpu/sass_layout_probe.py          # SASS counts, offline
    python benchmarks/gpu/sass_layout_probe.py --time   # on a GPU: each kernel timed at the burst-A grid
2026-11-29, Triton 3.9 (per-program tile offsets): k_current 552 instructions with 64 LDS.U8, k_transposed 472
with none; v_current 480 with 32 LDS.U8, v_transposed 480 with none (32 HMMA each). Timed on the H200
(Triton 3.6, 6,144 programs x 9 tiles): k_current 175.6 us, k_transposed 179.8; v_current 131.7,
v_transposed 146.1: the byte loads are not what bounds the decode kernel.
"""
import collections
import os
import re
import subprocess
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kvarn.kernels.decode_record import _codes_f16


@triton.jit
def k_current(q_ptr, kv_ptr, o_ptr, n_tiles, QP: tl.constexpr, D: tl.constexpr, G: tl.constexpr):
    qi = tl.arange(0, QP); d = tl.arange(0, D); j = tl.arange(0, G // 2)
    pid = tl.program_id(0).to(tl.int64)
    q = tl.load(q_ptr + qi[:, None] * D + d[None, :]).to(tl.float16)
    acc = tl.zeros([QP, G // 2], tl.float32)
    for t in range(n_tiles):
        kb = tl.load(kv_ptr + (pid * n_tiles + t) * (D * G // 2) + d[:, None] * (G // 2) + j[None, :])
        s0 = tl.dot(q, _codes_f16(kb, 0, 15, True))
        s1 = tl.dot(q, _codes_f16(kb, 4, 15, True))
        acc += s0 * s1
    tl.store(o_ptr + pid * QP * G + qi[:, None] * (G // 2) + j[None, :], acc)


@triton.jit
def k_transposed(q_ptr, kv_ptr, o_ptr, n_tiles, QP: tl.constexpr, D: tl.constexpr, G: tl.constexpr):
    qi = tl.arange(0, QP); e = tl.arange(0, D // 2); n = tl.arange(0, G)
    qe = tl.load(q_ptr + qi[:, None] * D + 2 * e[None, :]).to(tl.float16)
    qo = tl.load(q_ptr + qi[:, None] * D + 2 * e[None, :] + 1).to(tl.float16)
    pid = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([QP, G], tl.float32)
    for t in range(n_tiles):
        kb = tl.load(kv_ptr + (pid * n_tiles + t) * (D * G // 2) + n[:, None] * (D // 2) + e[None, :])  # [G, D/2]
        s = tl.dot(qe, tl.trans(_codes_f16(kb, 0, 15, True)))
        s = tl.dot(qo, tl.trans(_codes_f16(kb, 4, 15, True)), s)
        acc += s
    tl.store(o_ptr + pid * QP * G + qi[:, None] * G + n[None, :], acc)


def sass_instructions(ck, name: str) -> list[tuple[int, str, int | None]]:
    """SASS of a compiled Triton kernel (``cuobjdump -sass`` of its cubin, also left in the temp folder as
    NAME.sass): one (address, opcode with suffixes, branch target or None) per instruction."""
    cubin = os.path.join(tempfile.gettempdir(), name + ".cubin")
    with open(cubin, "wb") as f:
        f.write(ck.asm["cubin"])
    bindir = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin")
    sass = subprocess.run([os.path.join(bindir, "cuobjdump"), "-sass", cubin], capture_output=True, text=True).stdout
    with open(os.path.join(tempfile.gettempdir(), name + ".sass"), "w") as f:
        f.write(sass)
    ins = []
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]+)\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)\s*(0x[0-9a-f]+)?", line)
        if m:
            tgt = int(m.group(4), 16) if m.group(3) == "BRA" and m.group(4) else None
            ins.append((int(m.group(1), 16), m.group(3), tgt))
    return ins


def compile_count(K):
    sig = {"q_ptr": "*fp32", "kv_ptr": "*u8", "o_ptr": "*fp32", "n_tiles": "i32", "QP": "constexpr", "D": "constexpr", "G": "constexpr"}
    const = {(K.arg_names.index(k),): v for k, v in dict(QP=16, D=128, G=128).items()}
    attrs = {(i,): [["tt.divisibility", 16]] for i, nm in enumerate(K.arg_names) if nm.endswith("_ptr")}
    ck = triton.compile(ASTSource(fn=K, signature=sig, constexprs=const, attrs=attrs), target=GPUTarget("cuda", 90, 32),
                        options=dict(num_warps=4, num_stages=1))
    ops = collections.Counter(op for _, op, _ in sass_instructions(ck, "sass_layout_probe"))
    lds = {k: v for k, v in ops.items() if k.startswith(("LDS", "STS", "LDSM", "LDG"))}
    print(K.__name__, "total", sum(ops.values()), "smem", ck.metadata.shared, lds, "PRMT", ops.get("PRMT", 0), "HMMA", sum(v for k, v in ops.items() if k.startswith("HMMA")))


@triton.jit
def v_current(q_ptr, kv_ptr, o_ptr, n_tiles, QP: tl.constexpr, D: tl.constexpr, G: tl.constexpr):
    qi = tl.arange(0, QP); n = tl.arange(0, G); e = tl.arange(0, D // 4)
    p = tl.load(q_ptr + qi[:, None] * G + n[None, :]).to(tl.float16)
    a0 = tl.zeros([QP, D // 4], tl.float32); a1 = tl.zeros([QP, D // 4], tl.float32)
    a2 = tl.zeros([QP, D // 4], tl.float32); a3 = tl.zeros([QP, D // 4], tl.float32)
    pid = tl.program_id(0).to(tl.int64)
    for t in range(n_tiles):
        vb = tl.load(kv_ptr + (pid * n_tiles + t) * (D * G // 4) + n[:, None] * (D // 4) + e[None, :])  # [G, D/4]
        a0 = tl.dot(p, _codes_f16(vb, 0, 3, True), a0)
        a1 = tl.dot(p, _codes_f16(vb, 2, 3, True), a1)
        a2 = tl.dot(p, _codes_f16(vb, 4, 3, True), a2)
        a3 = tl.dot(p, _codes_f16(vb, 6, 3, True), a3)
    tl.store(o_ptr + pid * QP * D + qi[:, None] * D + e[None, :], a0 + a1 + a2 + a3)


@triton.jit
def v_transposed(q_ptr, kv_ptr, o_ptr, n_tiles, QP: tl.constexpr, D: tl.constexpr, G: tl.constexpr):
    qi = tl.arange(0, QP); j = tl.arange(0, G // 4); d = tl.arange(0, D)
    p0 = tl.load(q_ptr + qi[:, None] * G + 4 * j[None, :]).to(tl.float16)
    p1 = tl.load(q_ptr + qi[:, None] * G + 4 * j[None, :] + 1).to(tl.float16)
    p2 = tl.load(q_ptr + qi[:, None] * G + 4 * j[None, :] + 2).to(tl.float16)
    p3 = tl.load(q_ptr + qi[:, None] * G + 4 * j[None, :] + 3).to(tl.float16)
    acc = tl.zeros([QP, D], tl.float32)
    pid = tl.program_id(0).to(tl.int64)
    for t in range(n_tiles):
        vb = tl.load(kv_ptr + (pid * n_tiles + t) * (D * G // 4) + d[:, None] * (G // 4) + j[None, :])  # [D, G/4]
        acc = tl.dot(p0, tl.trans(_codes_f16(vb, 0, 3, True)), acc)
        acc = tl.dot(p1, tl.trans(_codes_f16(vb, 2, 3, True)), acc)
        acc = tl.dot(p2, tl.trans(_codes_f16(vb, 4, 3, True)), acc)
        acc = tl.dot(p3, tl.trans(_codes_f16(vb, 6, 3, True)), acc)
    tl.store(o_ptr + pid * QP * D + qi[:, None] * D + d[None, :], acc)


def time_on_gpu(programs=6144, n_tiles=9, qp=16, d=128, g=128):
    """Each kernel over ``programs`` programs x ``n_tiles`` distinct tiles (burst A: B 768 x Hk 8, 1.1K
    context); median us of do_bench (L2 flushed) and the tile bytes' rate. Same 4 warps / 1 stage."""
    import torch
    q = torch.randn(qp, max(d, g), device="cuda")
    out = torch.empty(programs * qp * max(d, g), device="cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    res = {}
    for kern, tile_bytes in ((k_current, d * g // 2), (k_transposed, d * g // 2), (v_current, d * g // 4),
                             (v_transposed, d * g // 4)):
        kv = torch.randint(0, 256, (programs * n_tiles * tile_bytes,), dtype=torch.uint8, device="cuda")
        fn = lambda: kern[(programs,)](q, kv, out, n_tiles, QP=qp, D=d, G=g, num_warps=4, num_stages=1)  # noqa: E731
        us = 1e3 * triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
        res[kern.__name__] = dict(us=round(us, 1), gbs=round(kv.numel() / us / 1e3, 1),
                                  ns_per_tile_per_sm=round(1e3 * us * sms / (programs * n_tiles), 1))
        print(kern.__name__, res[kern.__name__], flush=True)
        del kv
    return res


if __name__ == "__main__":
    import sys
    if "--time" in sys.argv:  # on a GPU: time the four kernels at the burst-A shape
        time_on_gpu()
    else:
        for kern in (k_current, k_transposed, v_current, v_transposed):
            compile_count(kern)
