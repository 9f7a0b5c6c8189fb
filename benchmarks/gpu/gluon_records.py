"""Spike: the decode record pass written in Gluon, with each tile's record copied global -> shared memory
asynchronously (cp.async) one tile ahead into a two-stage buffer, then fed to the MMAs by ldmatrix.

Why: the stall profile of the Triton kernel (results/h200-verify-2026-12-01p) has 28% of all warp samples on the
shared-memory stores that stage a tile's code bytes for ldmatrix while they wait for those bytes to arrive from
memory; Triton's ``tl.load`` path cannot issue that copy early without holding the bytes in registers.

Scope (a measurement, not the product kernel): kvarn_k4v2_g128, head_dim 128, 4 query heads per KV head, every
tile a full record (no fp16 pool tiles, no masks, no split-K, no rotation). One program per (request, KV head),
2 warps. q arrives rotated and scaled by scale * log2(e), fp32 [B, Hq, 128]; o leaves normalized, in the rotated
frame, fp32. The tile math is the Triton kernel's transposed form (decode_record.py): per token plane p,
S^T = codes_K(p)^T (q ks)^T folded with kz, kc; per channel plane c, O^T += codes_V(c)^T (p vs)^T folded with vz, vc.

    python3 gluon_records.py            # on the GPU host: checks against torch, then times it against the
                                        # Triton kernel on the same all-record cache (us per layer call)
"""
from __future__ import annotations

import argparse
import json
import math

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

D = gl.constexpr(128)
G = gl.constexpr(128)
QPK = gl.constexpr(4)
R = gl.constexpr(13824)  # record bytes; regions as kvarn.config.KvarnConfig.offsets (kvarn_k4v2_g128, head_dim 128)
K_CODES = gl.constexpr(0)
K_RS = gl.constexpr(8192)  # ks; kz = K_RS + 256, kc = K_RS + 512
V_CODES = gl.constexpr(8960)
V_CS = gl.constexpr(13056)  # vc; vs = V_CS + 256, vz = V_CS + 512


@gluon.jit
def _codes(x, SH: gl.constexpr, MASK: gl.constexpr):
    """uint8 x -> fp16 1024 + ((x >> SH) & MASK), four bytes per shift + AND + two PRMTs (as decode_record)."""
    return gl.inline_asm_elementwise(
        "{ .reg .b32 t; shr.b32 t, $2, " + SH.__str__() + "; and.b32 t, t, " + (MASK * 0x01010101).__str__()
        + "; prmt.b32 $0, t, 0x64646464, 0x4140; prmt.b32 $1, t, 0x64646464, 0x4342; }",
        "=r,=r,r", [x], dtype=gl.float16, is_pure=True, pack=4)


@gluon.jit
def _issue(rec, kbuf, vbuf, hbuf, st, koff, voff, hoff):
    """cp.async of one record into stage st: K codes [64, 128], V codes [32, 128], and the fp16 vectors
    ks, kz, kc (3 x 128 from K_RS) and vc, vs, vz (3 x 128 from V_CS) as hbuf [6, 128] (two [3, 128] halves)."""
    cp.async_copy_global_to_shared(kbuf.index(st), rec + koff)
    cp.async_copy_global_to_shared(vbuf.index(st), rec + voff)
    cp.async_copy_global_to_shared(hbuf.index(st), rec.to(gl.pointer_type(gl.float16)) + hoff)
    cp.commit_group()


@gluon.jit
def gluon_records_kernel(q_ptr, kv_ptr, bt_ptr, o_ptr, n_tiles, stride_kvb, stride_btb,
                         HK: gl.constexpr, NW: gl.constexpr):
    pid = gl.program_id(0)
    b = pid // HK
    hk = pid % HK
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[NW, 1], instr_shape=[16, 8])
    opa: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=4)
    opb: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=4)
    rows: gl.constexpr = gl.SliceLayout(1, mma)  # per token (scores) / per channel (accumulators)
    cols: gl.constexpr = gl.SliceLayout(0, mma)  # per query row
    kcl: gl.constexpr = gl.BlockedLayout([1, 16], [4, 8], [NW, 1], [1, 0])  # [64, 128] u8 copies
    vcl: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [NW, 1], [1, 0])  # [32, 128] u8 copies
    hcl: gl.constexpr = gl.BlockedLayout([1, 2], [2, 16], [NW, 1], [1, 0])  # [8, 128] fp16 copies (4 B each)
    qbl: gl.constexpr = gl.BlockedLayout([1, QPK], [32, 1], [NW, 1], [1, 0])  # q^T [128, 4]
    ksh: gl.constexpr = gl.SwizzledSharedLayout(vec=16, per_phase=1, max_phase=8, order=[1, 0])
    vsh: gl.constexpr = gl.SwizzledSharedLayout(vec=16, per_phase=1, max_phase=8, order=[1, 0])
    hsh: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0])
    flat: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[0])
    kbuf = gl.allocate_shared_memory(gl.uint8, [2, 64, 128], ksh)
    vbuf = gl.allocate_shared_memory(gl.uint8, [2, 32, 128], vsh)
    hbuf = gl.allocate_shared_memory(gl.float16, [2, 8, 128], hsh)

    kr = gl.arange(0, 64, layout=gl.SliceLayout(1, kcl))
    kc_ = gl.arange(0, 128, layout=gl.SliceLayout(0, kcl))
    koff = K_CODES + kr[:, None] * 128 + kc_[None, :]
    vr = gl.arange(0, 32, layout=gl.SliceLayout(1, vcl))
    vc_ = gl.arange(0, 128, layout=gl.SliceLayout(0, vcl))
    voff = V_CODES + vr[:, None] * 128 + vc_[None, :]
    hr = gl.arange(0, 8, layout=gl.SliceLayout(1, hcl))
    hc = gl.arange(0, 128, layout=gl.SliceLayout(0, hcl))
    # rows 0-2: ks, kz, kc (K_RS..); rows 3-5: vc, vs, vz (V_CS..; vc unused here); rows 6-7 repeat row 5
    hrow = gl.minimum(hr, 5)
    hoff = gl.where(hrow < 3, K_RS // 2 + hrow * 128, V_CS // 2 + (hrow - 3) * 128)[:, None] + hc[None, :]  # fp16 units

    # q rows of this KV head, transposed [128, 4], unit max per row (the fold of decode_record)
    qd = gl.arange(0, 128, layout=gl.SliceLayout(1, qbl))
    qn = gl.arange(0, QPK, layout=gl.SliceLayout(0, qbl))
    qt = gl.load(q_ptr + (b * HK * QPK + hk * QPK + qn[None, :]) * D + qd[:, None])
    qa = gl.max(gl.abs(qt), 0) + 1e-30
    q_un = qt * (1.0 / qa)[None, :]
    qa_c = gl.convert_layout(qa, cols)

    bt_row = bt_ptr + b * stride_btb
    rec0 = kv_ptr + gl.load(bt_row).to(gl.int64) * stride_kvb + hk * R
    _issue(rec0, kbuf, vbuf, hbuf, 0, koff, voff, hoff)
    # vc[4e + c] per channel plane c goes through registers (a strided read), one tile ahead
    e4 = gl.arange(0, 32, layout=rows) * 4
    vcp = (rec0 + V_CS).to(gl.pointer_type(gl.float16)) + e4
    vn0 = gl.load(vcp + 0)
    vn1 = gl.load(vcp + 1)
    vn2 = gl.load(vcp + 2)
    vn3 = gl.load(vcp + 3)

    m_i = gl.full([QPK], -1e30, gl.float32, layout=cols)
    l_i = gl.zeros([QPK], gl.float32, layout=cols)
    a0 = gl.zeros([32, QPK], gl.float32, layout=mma)
    a1 = gl.zeros([32, QPK], gl.float32, layout=mma)
    a2 = gl.zeros([32, QPK], gl.float32, layout=mma)
    a3 = gl.zeros([32, QPK], gl.float32, layout=mma)
    zs = gl.zeros([64, QPK], gl.float32, layout=mma)
    zv = gl.zeros([32, QPK], gl.float32, layout=mma)
    for t in range(n_tiles):
        st = t % 2
        # the next tile's record (the last tile re-copies itself: harmless, keeps the group count fixed)
        nb = gl.load(bt_row + gl.minimum(t + 1, n_tiles - 1)).to(gl.int64)
        _issue(kv_ptr + nb * stride_kvb + hk * R, kbuf, vbuf, hbuf, 1 - st, koff, voff, hoff)
        vcn = (kv_ptr + nb * stride_kvb + hk * R + V_CS).to(gl.pointer_type(gl.float16)) + e4  # next tile's vc
        cp.wait_group(1)
        gl.thread_barrier()
        hv = hbuf.index(st)._reinterpret(gl.float16, [1024], flat)  # rows of 128 as one vector
        ks = hv.slice(0, 128).load(gl.SliceLayout(1, qbl)).to(gl.float32)
        kz = hv.slice(128, 128).load(gl.SliceLayout(1, qbl)).to(gl.float32)
        qk = (q_un * ks[:, None]).to(gl.float16)
        qz = gl.sum(q_un * kz[:, None] - 1024.0 * qk.to(gl.float32), 0)
        qk_op = gl.convert_layout(qk, opb)
        qz_c = gl.convert_layout(qz, cols)
        kb = kbuf.index(st).load(opa)  # [64, 128] u8: token j of plane p in nibble p
        s0 = mma_v2(_codes(kb, 0, 15), qk_op, zs)
        s1 = mma_v2(_codes(kb, 4, 15), qk_op, zs)
        kc0 = hv.slice(256, 64).load(rows).to(gl.float32)
        kc1 = hv.slice(320, 64).load(rows).to(gl.float32)
        s0 = (s0 + qz_c[None, :]) * qa_c[None, :] * kc0[:, None]
        s1 = (s1 + qz_c[None, :]) * qa_c[None, :] * kc1[:, None]
        m_new = gl.maximum(m_i, gl.max(gl.maximum(s0, s1), 0))
        alpha = gl.exp2(m_i - m_new)
        p0 = gl.exp2(s0 - m_new[None, :])
        p1 = gl.exp2(s1 - m_new[None, :])
        vs0 = hv.slice(512, 64).load(rows).to(gl.float32)
        vs1 = hv.slice(576, 64).load(rows).to(gl.float32)
        vz0 = hv.slice(640, 64).load(rows).to(gl.float32)
        vz1 = hv.slice(704, 64).load(rows).to(gl.float32)
        pv0 = (p0 * vs0[:, None]).to(gl.float16)
        pv1 = (p1 * vs1[:, None]).to(gl.float16)
        zsum = p0 * vz0[:, None] - 1024.0 * pv0.to(gl.float32) + p1 * vz1[:, None] - 1024.0 * pv1.to(gl.float32)
        ps = gl.sum(p0 + p1, 0)
        pzc = gl.sum(zsum, 0)
        b0 = gl.convert_layout(pv0, opb)
        b1 = gl.convert_layout(pv1, opb)
        vb0 = vbuf.index(st).slice(0, 64, dim=1).load(opa)  # [32, 64] u8: channel 4e + c in bits 2c
        vb1 = vbuf.index(st).slice(64, 64, dim=1).load(opa)
        t0 = mma_v2(_codes(vb1, 0, 3), b1, mma_v2(_codes(vb0, 0, 3), b0, zv))
        t1 = mma_v2(_codes(vb1, 2, 3), b1, mma_v2(_codes(vb0, 2, 3), b0, zv))
        t2 = mma_v2(_codes(vb1, 4, 3), b1, mma_v2(_codes(vb0, 4, 3), b0, zv))
        t3 = mma_v2(_codes(vb1, 6, 3), b1, mma_v2(_codes(vb0, 6, 3), b0, zv))
        vc0 = vn0.to(gl.float32)  # this tile's vc[4e + c], loaded a tile ago
        vc1 = vn1.to(gl.float32)
        vc2 = vn2.to(gl.float32)
        vc3 = vn3.to(gl.float32)
        vn0 = gl.load(vcn + 0)
        vn1 = gl.load(vcn + 1)
        vn2 = gl.load(vcn + 2)
        vn3 = gl.load(vcn + 3)
        m_i = m_new
        l_i = l_i * alpha + ps
        a0 = a0 * alpha[None, :] + (t0 + pzc[None, :]) * vc0[:, None]
        a1 = a1 * alpha[None, :] + (t1 + pzc[None, :]) * vc1[:, None]
        a2 = a2 * alpha[None, :] + (t2 + pzc[None, :]) * vc2[:, None]
        a3 = a3 * alpha[None, :] + (t3 + pzc[None, :]) * vc3[:, None]
        gl.thread_barrier()
    cp.wait_group(0)
    inv = (1.0 / l_i)[None, :]
    e = gl.arange(0, 32, layout=rows)
    r = gl.arange(0, QPK, layout=cols)
    ob = o_ptr + (b * HK * QPK + hk * QPK + r[None, :]) * D + 4 * e[:, None]
    gl.store(ob, a0 * inv)
    gl.store(ob + 1, a1 * inv)
    gl.store(ob + 2, a2 * inv)
    gl.store(ob + 3, a3 * inv)


def launch(qs, kv_cache, block_table, n_tiles: int, num_warps: int = 2, maxnreg: int | None = None):
    """qs fp32 [B, Hk*4, 128] (rotated, * scale * log2 e), kv_cache uint8 [blocks, Hk, 13824], block_table int32
    [B, >= n_tiles] (every tile a full record) -> o fp32 [B, Hk*4, 128], rotated frame."""
    import torch
    bsz, hq, d = qs.shape
    hk = kv_cache.shape[1]
    if (d, hq, kv_cache.shape[2]) != (128, 4 * hk, 13824) or qs.dtype != torch.float32 or not qs.is_contiguous():
        raise ValueError(f"spike covers kvarn_k4v2_g128, head_dim 128, 4 query heads per KV head, fp32 q; got q "
                         f"{qs.dtype} {tuple(qs.shape)}, records {tuple(kv_cache.shape)}")
    if kv_cache.stride(1) != 13824 or block_table.dtype != torch.int32 or block_table.shape[1] < n_tiles:
        raise ValueError("records must be [blocks, Hk, 13824] with heads contiguous; block_table int32 [B, >= n]")
    o = torch.empty_like(qs)
    kw = dict(num_warps=num_warps)
    if maxnreg:
        kw["maxnreg"] = maxnreg
    gluon_records_kernel[(bsz * hk,)](qs, kv_cache, block_table, o, n_tiles, kv_cache.stride(0),
                                      block_table.stride(0), HK=hk, NW=num_warps, **kw)
    return o


def main() -> None:
    import torch

    from bench_decode import kvarn_state
    from gpu_timing import copy_rate_gbs, device_info, graph_ms
    from kvarn.config import KvarnConfig
    from kvarn.kernels import kvarn_decode_attention
    from kvarn.reference.codec import decode_tiles
    from kvarn.reference.hadamard import hadamard_matrix

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="256x8192,768x1152,128x8192,768x2048")
    ap.add_argument("--json", default=None)
    ap.add_argument("--warps", type=int, nargs="+", default=[2], help="warps per program of the Gluon kernel")
    ap.add_argument("--maxnreg", type=int, default=None)
    a = ap.parse_args()
    cfg = KvarnConfig.from_name("kvarn_k4v2_g128", head_dim=128)
    hk, hq, scale = 8, 32, 128 ** -0.5
    log2e = 1.4426950408889634
    h = hadamard_matrix(128, torch.float32, "cuda")  # normalized: q_rot = q h
    copy = copy_rate_gbs()
    out = {"device": device_info(), "copy_gbs": copy, "points": []}
    # correctness: a small all-record cache against torch on the decoded tiles
    st, _ = kvarn_state(6, 640, hk, cfg)
    cache, table = st["kv_cache"], st["block_table"]
    q = torch.randn(6, hq, 128, device="cuda")
    o = launch((q * (scale * log2e)).contiguous(), cache, table, 5, a.warps[0], a.maxnreg)
    worst = 0.0
    for b in range(6):
        for g in range(hk):
            k, v = decode_tiles(cache[table[b].long(), g], cfg)  # [5, G, D] each
            k, v = k.reshape(-1, 128), v.reshape(-1, 128)
            ref = torch.softmax(q[b, 4 * g:4 * g + 4] @ k.T * scale, -1) @ v
            worst = max(worst, ((o[b, 4 * g:4 * g + 4] - ref).norm() / ref.norm()).item())
    print(f"check: worst relative error {worst:.2e} over 48 (request, KV head) pairs", flush=True)
    out["check_rel_err"] = worst
    for shp in a.shapes.split(","):
        bsz, ctx = map(int, shp.split("x"))
        n = ctx // 128
        st, _ = kvarn_state(bsz, ctx, hk, cfg)
        st["block_to_slot"].fill_(-1)  # every tile a record, as in the spike
        qm = torch.randn(bsz, hq, 128, device="cuda", dtype=torch.bfloat16)
        qs = ((qm.float() @ h) * (scale * log2e)).contiguous()
        seq = torch.full((bsz,), ctx, dtype=torch.int32, device="cuda")
        nbytes = bsz * hk * n * 13824
        res = {"batch": bsz, "context": ctx, "bytes": nbytes}
        calls = {"triton": lambda: kvarn_decode_attention(qm, seq_lens=seq, scale=scale, cfg=cfg, **st)}
        for w in a.warps:
            calls[f"gluon_w{w}"] = lambda w=w: launch(qs, st["kv_cache"], st["block_table"], n, w, a.maxnreg)
        ref = calls["triton"]().float() @ h  # back to the rotated frame
        got = calls[f"gluon_w{a.warps[0]}"]()
        res["rel_err_vs_triton"] = round(((got - ref).norm() / ref.norm()).item(), 5)
        for name, fn in calls.items():
            us = graph_ms(fn) * 1e3
            res[name] = {"us": round(us, 1), "pct_copy": round(100 * nbytes / (us * 1e-6) / 1e9 / copy, 1)}
        print("point", json.dumps(res), flush=True)
        out["points"].append(res)
        del st
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
