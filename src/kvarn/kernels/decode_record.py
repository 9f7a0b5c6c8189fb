"""Triton helpers of the decode kernel's record pass (decode_kernel.py): one packed tile, never materialized.

A record tile of ``G`` tokens of one (block, KV head) is read in three steps, each a helper here. The ``_t``
helpers are the same math transposed (SW, the kernel's 2-warp programs): scores [G/KPB, QP] = K^T q^T and
accumulators [D/VPB, QP] = V^T P^T, so the tile's tokens (channels) fill the MMA's M axis and the few query rows
its 8-wide N axis; ``_tile_scores``/``_tile_values`` pick the orientation. (Written once with broadcast helpers,
the two orientations compile to a reordered 2-warp build, 1,070 of its 3,095 sm_90 instructions moved: kept
apart until that build is timed.)

* ``_rec_addr``: where the record is and which of its tokens count (a pool tile: nothing);
* ``_rec_scores``: q [QP, D] against the K codes, per token plane p (tokens p*(G/KPB) + j):
  s[i, n] = qa[i] * kc[n] * (sum_d (q[i,d] ks[d] / qa[i]) (1024 + code_k[d, n]) + qz[i]), in the log2 domain;
* ``_rec_values``: probabilities p = exp2(s - m) and their V contribution per channel plane c (channels
  VPB*e + c): vc[d] * (sum_n (p[i,n] vs[n]) (1024 + code_v[n, d]) - 1024 sum_n p vs + sum_n p[i,n] vz[n]).

Codes enter tl.dot as fp16 1024 + code (``_codes_f16``); method.md section 1.4 has the folded scales.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _codes_f16(x, SH: tl.constexpr, MASK: tl.constexpr, ASM: tl.constexpr):
    """uint8 bytes x -> fp16 (1024 + ((x >> SH) & MASK)), elementwise.

    ASM: per 32-bit register of four bytes, one shift, one AND and two PRMTs that place each byte
    under the fp16 exponent 0x64 (1024): one instruction per code, no int->float conversion.
    Otherwise (Triton's interpreter): the same value by integer ops."""
    if ASM:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 t; shr.b32 t, $2, " + SH.__str__() + "; and.b32 t, t, " + (MASK * 0x01010101).__str__()
            + "; prmt.b32 $0, t, 0x64646464, 0x4140; prmt.b32 $1, t, 0x64646464, 0x4342; }",
            "=r,=r,r", [x], dtype=tl.float16, is_pure=True, pack=4)
    else:
        return (((x >> SH) & MASK).to(tl.int16) | 0x6400).to(tl.float16, bitcast=True)


@triton.jit
def _prefetch_l2(base, PL: tl.constexpr, NL: tl.constexpr):
    """Ask L2 for the NL 128-byte lines at base (a record): one ``prefetch.global.L2`` per line, no
    registers held, nothing waits on it. PL = next pow2 of NL (lanes past NL repeat the last line)."""
    ln = tl.minimum(tl.arange(0, PL), NL - 1)
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [base + ln * 128],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _row_mask(n, n_valid, lo, ROWS: tl.constexpr, nlo=0, TS: tl.constexpr = False):
    """[QP, N] mask of the positions n a row may attend to in this tile: n < n_valid, or (ROWS: several
    tokens per program) n < n_valid + lo[row], lo [QP] = the row's causal length - the program's longest;
    TS (sink "token"): also n >= nlo (1 on a record whose row 0 is read from its fp16 sink row, else 0)."""
    if ROWS:
        m = n[None, :] < (n_valid + lo)[:, None]
    else:
        m = (n < n_valid)[None, :]
    if TS:
        m = m & (n >= nlo)[None, :]
    return m


@triton.jit
def _k_plane(qk_op, kb, qz, qa, kcs_ptr, n_valid, lo, nlo, P: tl.constexpr, KB: tl.constexpr, KM: tl.constexpr,
             KPB: tl.constexpr, G: tl.constexpr, ASM: tl.constexpr, ROWS: tl.constexpr, TS: tl.constexpr):
    """Scores of token plane P: kb uint8 [D, G/KPB] K bytes -> (s [QP, G/KPB] log2-domain, -1e30 (finite,
    so an all-masked tile leaves m finite) past n_valid; token index n [G/KPB] = P*(G/KPB) + j)."""
    n = P * (G // KPB) + tl.arange(0, G // KPB)
    s = tl.dot(qk_op, _codes_f16(kb, KB * P, KM, ASM), tl.zeros([qk_op.shape[0], G // KPB], tl.float32))
    kcs = tl.load(kcs_ptr + n, mask=n < n_valid, other=0.0).to(tl.float32)
    return tl.where(_row_mask(n, n_valid, lo, ROWS, nlo, TS), ((s + qz[:, None]) * qa[:, None]) * kcs[None, :],
                    -1e30), n


@triton.jit
def _p_plane(s, n, n_valid, lo, nlo, m_new, rec_h_ptr, V_RS: tl.constexpr, V_RZ: tl.constexpr, ROWS: tl.constexpr,
             TS: tl.constexpr):
    """Token plane of probabilities: (p [QP, N] fp32 (0 past n_valid), p*vs as the fp16 dot operand,
    p*vz - 1024*(p*vs) in fp32: the terms whose row sum is the folded V zero point)."""
    nm = n < n_valid
    p = tl.where(_row_mask(n, n_valid, lo, ROWS, nlo, TS), tl.exp2(s - m_new[:, None]), 0.0)
    vs = tl.load(rec_h_ptr + V_RS // 2 + n, mask=nm, other=0.0).to(tl.float32)
    vz = tl.load(rec_h_ptr + V_RZ // 2 + n, mask=nm, other=0.0).to(tl.float32)
    pv = (p * vs[None, :]).to(tl.float16)
    return p, pv, p * vz[None, :] - 1024.0 * pv.to(tl.float32)


@triton.jit
def _v_planes(pv, vb, t0, t1, t2, t3, VB: tl.constexpr, VM: tl.constexpr, VPB: tl.constexpr, ASM: tl.constexpr):
    """Accumulate pv [QP, N] (fp16) . codes of vb uint8 [N, D/VPB] into the VPB channel planes t_p."""
    t0 = tl.dot(pv, _codes_f16(vb, 0, VM, ASM), t0)
    t1 = tl.dot(pv, _codes_f16(vb, VB, VM, ASM), t1)
    if VPB == 4:
        t2 = tl.dot(pv, _codes_f16(vb, 4, VM, ASM), t2)
        t3 = tl.dot(pv, _codes_f16(vb, 6, VM, ASM), t3)
    return t0, t1, t2, t3


@triton.jit
def _rec_addr(blk, ent, t, seq_len, stride_kvb, hk, d, ev, G: tl.constexpr, R: tl.constexpr):
    """Tile t with block id blk and pool-map entry ent (< 0: a record; <= -2: its row 0 in a sink row) ->
    (nlo, K-vector mask [D], V-vector mask [D/VPB], valid tokens, record byte offset, its fp16 offset)."""
    rec = ent < 0
    nlo = (ent <= -2).to(tl.int32)  # used with TS only: position 0 comes from the sink row
    md = (d * 0 + rec.to(tl.int32)) > 0  # masks as tensors: a pool tile loads nothing here
    me = (ev * 0 + rec.to(tl.int32)) > 0
    n_valid = tl.where(rec, seq_len - t * G, 0)
    rb = blk * stride_kvb + hk * R  # byte offset of the record
    return nlo, md, me, n_valid, rb, rb // 2  # (R and all scale offsets are even)


@triton.jit
def _rec_scores(q_un, qa, ks, kz, kv_ptr, kvh_ptr, rb, hb, n_valid, lo, nlo, md, d, jk,
                K_CODES: tl.constexpr, K_CS: tl.constexpr, KB: tl.constexpr, KPB: tl.constexpr,
                G: tl.constexpr, D: tl.constexpr, ASM: tl.constexpr, ROWS: tl.constexpr, TS: tl.constexpr):
    """K side of one record tile: q_un [QP, D] (rows scaled to max |q| = 1), ks/kz [D] fp32 channel scale and
    zero -> (s0..s3 [QP, G/KPB] scores per token plane, n0..n3 their token indices; s2, s3 = s0, s1 when
    KPB == 2), and the tile's row max [QP]."""
    KM: tl.constexpr = (1 << KB) - 1
    qk_op = (q_un * ks[None, :]).to(tl.float16)  # |q ks| / qa stays in fp16 range (ks < 65504)
    # s = qa * (qk_op . (1024 + code) + qz), qz = sum_d q kz / qa - 1024 * sum(qk_op)
    qz = tl.sum(q_un * kz[None, :] - 1024.0 * qk_op.to(tl.float32), 1)
    kb = tl.load(kv_ptr + rb + K_CODES + d[:, None] + jk[None, :] * D, mask=md[:, None], other=0)  # [D, G/KPB]
    kcb = kvh_ptr + hb + K_CS // 2
    s0, n0 = _k_plane(qk_op, kb, qz, qa, kcb, n_valid, lo, nlo, 0, KB, KM, KPB, G, ASM, ROWS, TS)
    s1, n1 = _k_plane(qk_op, kb, qz, qa, kcb, n_valid, lo, nlo, 1, KB, KM, KPB, G, ASM, ROWS, TS)
    s2 = s0
    s3 = s1
    n2 = n0
    n3 = n1
    sm = tl.maximum(s0, s1)
    if KPB == 4:
        s2, n2 = _k_plane(qk_op, kb, qz, qa, kcb, n_valid, lo, nlo, 2, KB, KM, KPB, G, ASM, ROWS, TS)
        s3, n3 = _k_plane(qk_op, kb, qz, qa, kcb, n_valid, lo, nlo, 3, KB, KM, KPB, G, ASM, ROWS, TS)
        sm = tl.maximum(sm, tl.maximum(s2, s3))
    return s0, s1, s2, s3, n0, n1, n2, n3, tl.max(sm, 1)


@triton.jit
def _rec_values(s0, s1, s2, s3, n0, n1, n2, n3, n_valid, lo, nlo, m_new, kv_ptr, kvh_ptr, rb, hb, me, ev,
                V_CODES: tl.constexpr, V_CS: tl.constexpr, V_RS: tl.constexpr, V_RZ: tl.constexpr, G: tl.constexpr,
                VB: tl.constexpr, VPB: tl.constexpr, KPB: tl.constexpr, QP: tl.constexpr, D: tl.constexpr,
                ASM: tl.constexpr, ROWS: tl.constexpr, TS: tl.constexpr):
    """V side of one record tile at the running max m_new [QP] -> (sum of p per row [QP], the tile's terms
    c0..c3 [QP, D/VPB] of the channel-plane accumulators before their rescale; c2, c3 = c0, c1 when VPB == 2)."""
    VM: tl.constexpr = (1 << VB) - 1
    p0, pv0, z0 = _p_plane(s0, n0, n_valid, lo, nlo, m_new, kvh_ptr + hb, V_RS, V_RZ, ROWS, TS)
    p1, pv1, z1 = _p_plane(s1, n1, n_valid, lo, nlo, m_new, kvh_ptr + hb, V_RS, V_RZ, ROWS, TS)
    psum = p0 + p1
    zsum = z0 + z1
    vbase = kv_ptr + rb + V_CODES + ev[None, :] * G  # V bytes of token n: vbase + n
    zv = tl.zeros([QP, D // VPB], tl.float32)
    vb0 = tl.load(vbase + n0[:, None], mask=me[None, :], other=0)
    vb1 = tl.load(vbase + n1[:, None], mask=me[None, :], other=0)
    t0v, t1v, t2v, t3v = _v_planes(pv0, vb0, zv, zv, zv, zv, VB, VM, VPB, ASM)
    t0v, t1v, t2v, t3v = _v_planes(pv1, vb1, t0v, t1v, t2v, t3v, VB, VM, VPB, ASM)
    if KPB == 4:
        p2, pv2, z2 = _p_plane(s2, n2, n_valid, lo, nlo, m_new, kvh_ptr + hb, V_RS, V_RZ, ROWS, TS)
        p3, pv3, z3 = _p_plane(s3, n3, n_valid, lo, nlo, m_new, kvh_ptr + hb, V_RS, V_RZ, ROWS, TS)
        psum += p2 + p3
        zsum += z2 + z3
        vb2 = tl.load(vbase + n2[:, None], mask=me[None, :], other=0)
        vb3 = tl.load(vbase + n3[:, None], mask=me[None, :], other=0)
        t0v, t1v, t2v, t3v = _v_planes(pv2, vb2, t0v, t1v, t2v, t3v, VB, VM, VPB, ASM)
        t0v, t1v, t2v, t3v = _v_planes(pv3, vb3, t0v, t1v, t2v, t3v, VB, VM, VPB, ASM)
    ps = tl.sum(psum, 1)
    # o += vc * (pv . (1024 + code) - 1024 sum(pv) + sum p vz)
    pzc = tl.sum(zsum, 1)[:, None]
    vcb = kvh_ptr + hb + V_CS // 2 + VPB * ev
    c0 = (t0v + pzc) * tl.load(vcb, mask=me, other=0.0).to(tl.float32)[None, :]
    c1 = (t1v + pzc) * tl.load(vcb + 1, mask=me, other=0.0).to(tl.float32)[None, :]
    c2 = c0
    c3 = c1
    if VPB == 4:
        c2 = (t2v + pzc) * tl.load(vcb + 2, mask=me, other=0.0).to(tl.float32)[None, :]
        c3 = (t3v + pzc) * tl.load(vcb + 3, mask=me, other=0.0).to(tl.float32)[None, :]
    return ps, c0, c1, c2, c3


# ---- transposed form (SW): the tile's tokens are the MMA's M axis, the query rows its N axis ----


@triton.jit
def _row_mask_t(n, n_valid, lo, ROWS: tl.constexpr, nlo=0, TS: tl.constexpr = False):
    """_row_mask transposed: [N, QP]."""
    if ROWS:
        m = n[:, None] < (n_valid + lo)[None, :]
    else:
        m = (n < n_valid)[:, None]
    if TS:
        m = m & (n >= nlo)[:, None]
    return m


@triton.jit
def _k_plane_t(qk_t, kbt, qz, qa, kcs_ptr, n_valid, lo, nlo, P: tl.constexpr, KB: tl.constexpr, KM: tl.constexpr,
               KPB: tl.constexpr, G: tl.constexpr, ASM: tl.constexpr, ROWS: tl.constexpr, TS: tl.constexpr):
    """_k_plane transposed: kbt uint8 [G/KPB, D], qk_t fp16 [D, QP] -> (s [G/KPB, QP], n [G/KPB])."""
    n = P * (G // KPB) + tl.arange(0, G // KPB)
    s = tl.dot(_codes_f16(kbt, KB * P, KM, ASM), qk_t, tl.zeros([G // KPB, qk_t.shape[1]], tl.float32))
    kcs = tl.load(kcs_ptr + n, mask=n < n_valid, other=0.0).to(tl.float32)
    return tl.where(_row_mask_t(n, n_valid, lo, ROWS, nlo, TS), ((s + qz[None, :]) * qa[None, :]) * kcs[:, None],
                    -1e30), n


@triton.jit
def _rec_scores_t(q_unt, qa, ks, kz, kv_ptr, kvh_ptr, rb, hb, n_valid, lo, nlo, md, d, jk,
                  K_CODES: tl.constexpr, K_CS: tl.constexpr, KB: tl.constexpr, KPB: tl.constexpr,
                  G: tl.constexpr, D: tl.constexpr, ASM: tl.constexpr, ROWS: tl.constexpr, TS: tl.constexpr):
    """_rec_scores transposed: q_unt [D, QP] -> s0..s3 [G/KPB, QP], n0..n3, the tile's row max [QP]."""
    KM: tl.constexpr = (1 << KB) - 1
    qk_t = (q_unt * ks[:, None]).to(tl.float16)
    qz = tl.sum(q_unt * kz[:, None] - 1024.0 * qk_t.to(tl.float32), 0)
    kbt = tl.load(kv_ptr + rb + K_CODES + jk[:, None] * D + d[None, :], mask=md[None, :], other=0)  # [G/KPB, D]
    kcb = kvh_ptr + hb + K_CS // 2
    s0, n0 = _k_plane_t(qk_t, kbt, qz, qa, kcb, n_valid, lo, nlo, 0, KB, KM, KPB, G, ASM, ROWS, TS)
    s1, n1 = _k_plane_t(qk_t, kbt, qz, qa, kcb, n_valid, lo, nlo, 1, KB, KM, KPB, G, ASM, ROWS, TS)
    s2 = s0
    s3 = s1
    n2 = n0
    n3 = n1
    sm = tl.maximum(s0, s1)
    if KPB == 4:
        s2, n2 = _k_plane_t(qk_t, kbt, qz, qa, kcb, n_valid, lo, nlo, 2, KB, KM, KPB, G, ASM, ROWS, TS)
        s3, n3 = _k_plane_t(qk_t, kbt, qz, qa, kcb, n_valid, lo, nlo, 3, KB, KM, KPB, G, ASM, ROWS, TS)
        sm = tl.maximum(sm, tl.maximum(s2, s3))
    return s0, s1, s2, s3, n0, n1, n2, n3, tl.max(sm, 0)


@triton.jit
def _p_plane_t(s, n, n_valid, lo, nlo, m_new, rec_h_ptr, V_RS: tl.constexpr, V_RZ: tl.constexpr, ROWS: tl.constexpr,
               TS: tl.constexpr):
    """_p_plane transposed: s [N, QP] -> (p, p*vs fp16, p*vz - 1024 p*vs), all [N, QP]."""
    nm = n < n_valid
    p = tl.where(_row_mask_t(n, n_valid, lo, ROWS, nlo, TS), tl.exp2(s - m_new[None, :]), 0.0)
    vs = tl.load(rec_h_ptr + V_RS // 2 + n, mask=nm, other=0.0).to(tl.float32)
    vz = tl.load(rec_h_ptr + V_RZ // 2 + n, mask=nm, other=0.0).to(tl.float32)
    pv = (p * vs[:, None]).to(tl.float16)
    return p, pv, p * vz[:, None] - 1024.0 * pv.to(tl.float32)


@triton.jit
def _v_planes_t(pv, vbt, t0, t1, t2, t3, VB: tl.constexpr, VM: tl.constexpr, VPB: tl.constexpr, ASM: tl.constexpr):
    """_v_planes transposed: codes of vbt uint8 [D/VPB, N] . pv [N, QP] into t_p [D/VPB, QP]."""
    t0 = tl.dot(_codes_f16(vbt, 0, VM, ASM), pv, t0)
    t1 = tl.dot(_codes_f16(vbt, VB, VM, ASM), pv, t1)
    if VPB == 4:
        t2 = tl.dot(_codes_f16(vbt, 4, VM, ASM), pv, t2)
        t3 = tl.dot(_codes_f16(vbt, 6, VM, ASM), pv, t3)
    return t0, t1, t2, t3


@triton.jit
def _rec_values_t(s0, s1, s2, s3, n0, n1, n2, n3, n_valid, lo, nlo, m_new, kv_ptr, kvh_ptr, rb, hb, me, ev,
                  V_CODES: tl.constexpr, V_CS: tl.constexpr, V_RS: tl.constexpr, V_RZ: tl.constexpr, G: tl.constexpr,
                  VB: tl.constexpr, VPB: tl.constexpr, KPB: tl.constexpr, QP: tl.constexpr, D: tl.constexpr,
                  ASM: tl.constexpr, ROWS: tl.constexpr, TS: tl.constexpr):
    """_rec_values transposed: -> (sum of p [QP], c0..c3 [D/VPB, QP])."""
    VM: tl.constexpr = (1 << VB) - 1
    p0, pv0, z0 = _p_plane_t(s0, n0, n_valid, lo, nlo, m_new, kvh_ptr + hb, V_RS, V_RZ, ROWS, TS)
    p1, pv1, z1 = _p_plane_t(s1, n1, n_valid, lo, nlo, m_new, kvh_ptr + hb, V_RS, V_RZ, ROWS, TS)
    psum = p0 + p1
    zsum = z0 + z1
    vbase = kv_ptr + rb + V_CODES + ev[:, None] * G  # V bytes of token n: vbase + n
    zv = tl.zeros([D // VPB, QP], tl.float32)
    vb0 = tl.load(vbase + n0[None, :], mask=me[:, None], other=0)
    vb1 = tl.load(vbase + n1[None, :], mask=me[:, None], other=0)
    t0v, t1v, t2v, t3v = _v_planes_t(pv0, vb0, zv, zv, zv, zv, VB, VM, VPB, ASM)
    t0v, t1v, t2v, t3v = _v_planes_t(pv1, vb1, t0v, t1v, t2v, t3v, VB, VM, VPB, ASM)
    if KPB == 4:
        p2, pv2, z2 = _p_plane_t(s2, n2, n_valid, lo, nlo, m_new, kvh_ptr + hb, V_RS, V_RZ, ROWS, TS)
        p3, pv3, z3 = _p_plane_t(s3, n3, n_valid, lo, nlo, m_new, kvh_ptr + hb, V_RS, V_RZ, ROWS, TS)
        psum += p2 + p3
        zsum += z2 + z3
        vb2 = tl.load(vbase + n2[None, :], mask=me[:, None], other=0)
        vb3 = tl.load(vbase + n3[None, :], mask=me[:, None], other=0)
        t0v, t1v, t2v, t3v = _v_planes_t(pv2, vb2, t0v, t1v, t2v, t3v, VB, VM, VPB, ASM)
        t0v, t1v, t2v, t3v = _v_planes_t(pv3, vb3, t0v, t1v, t2v, t3v, VB, VM, VPB, ASM)
    ps = tl.sum(psum, 0)
    pzc = tl.sum(zsum, 0)[None, :]
    vcb = kvh_ptr + hb + V_CS // 2 + VPB * ev
    c0 = (t0v + pzc) * tl.load(vcb, mask=me, other=0.0).to(tl.float32)[:, None]
    c1 = (t1v + pzc) * tl.load(vcb + 1, mask=me, other=0.0).to(tl.float32)[:, None]
    c2 = c0
    c3 = c1
    if VPB == 4:
        c2 = (t2v + pzc) * tl.load(vcb + 2, mask=me, other=0.0).to(tl.float32)[:, None]
        c3 = (t3v + pzc) * tl.load(vcb + 3, mask=me, other=0.0).to(tl.float32)[:, None]
    return ps, c0, c1, c2, c3


# ---- either orientation (the kernel's loop calls these) ----


@triton.jit
def _tile_scores(q_k, qa, ks, kz, kv_ptr, kvh_ptr, rb, hb, n_valid, lo, nlo, md, d, jk,
                 K_CODES: tl.constexpr, K_CS: tl.constexpr, KB: tl.constexpr, KPB: tl.constexpr,
                 G: tl.constexpr, D: tl.constexpr, ASM: tl.constexpr, ROWS: tl.constexpr, TS: tl.constexpr,
                 SW: tl.constexpr):
    """_rec_scores, or _rec_scores_t when SW (q_k then [D, QP])."""
    if SW:
        return _rec_scores_t(q_k, qa, ks, kz, kv_ptr, kvh_ptr, rb, hb, n_valid, lo, nlo, md, d, jk, K_CODES, K_CS,
                             KB, KPB, G, D, ASM, ROWS, TS)
    else:
        return _rec_scores(q_k, qa, ks, kz, kv_ptr, kvh_ptr, rb, hb, n_valid, lo, nlo, md, d, jk, K_CODES, K_CS,
                           KB, KPB, G, D, ASM, ROWS, TS)


@triton.jit
def _tile_values(s0, s1, s2, s3, n0, n1, n2, n3, n_valid, lo, nlo, m_new, kv_ptr, kvh_ptr, rb, hb, me, ev,
                 V_CODES: tl.constexpr, V_CS: tl.constexpr, V_RS: tl.constexpr, V_RZ: tl.constexpr, G: tl.constexpr,
                 VB: tl.constexpr, VPB: tl.constexpr, KPB: tl.constexpr, QP: tl.constexpr, D: tl.constexpr,
                 ASM: tl.constexpr, ROWS: tl.constexpr, TS: tl.constexpr, SW: tl.constexpr):
    """_rec_values, or _rec_values_t when SW."""
    if SW:
        return _rec_values_t(s0, s1, s2, s3, n0, n1, n2, n3, n_valid, lo, nlo, m_new, kv_ptr, kvh_ptr, rb, hb, me, ev,
                             V_CODES, V_CS, V_RS, V_RZ, G, VB, VPB, KPB, QP, D, ASM, ROWS, TS)
    else:
        return _rec_values(s0, s1, s2, s3, n0, n1, n2, n3, n_valid, lo, nlo, m_new, kv_ptr, kvh_ptr, rb, hb, me, ev,
                           V_CODES, V_CS, V_RS, V_RZ, G, VB, VPB, KPB, QP, D, ASM, ROWS, TS)


@triton.jit
def _per_row(v, SW: tl.constexpr):
    """A per-query-row vector [QP] broadcast over an accumulator: [QP, 1], or [1, QP] when SW."""
    if SW:
        return v[None, :]
    else:
        return v[:, None]


@triton.jit
def _per_col(v, SW: tl.constexpr):
    """A per-channel vector [E] broadcast over an accumulator: [1, E], or [E, 1] when SW."""
    if SW:
        return v[:, None]
    else:
        return v[None, :]


@triton.jit
def _acc_zeros(QP: tl.constexpr, E: tl.constexpr, SW: tl.constexpr):
    """A zero channel-plane accumulator: [QP, E], or [E, QP] when SW."""
    if SW:
        return tl.zeros([E, QP], tl.float32)
    else:
        return tl.zeros([QP, E], tl.float32)
