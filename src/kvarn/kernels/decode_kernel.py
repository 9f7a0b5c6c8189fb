"""The Triton programs of fused kvarn decode attention (launched by decode_attention.py).

Program (b, h, split): all Hq/Hk query heads of KV head h (QP = max(min_q_rows, next_pow2(Hq/Hk)) rows;
Triton pads a small-M tl.dot to the MMA shape itself), tiles t of request b in the split's range (split s
of S: tiles [s*ceil(n/S), (s+1)*ceil(n/S)) of the request's own n = ceil(seq_len/G) tiles, whatever the
block table's width). TPR > 1 (several tokens per program: chunked-prefill continuations): program b serves
TPR consecutive tokens of one request, QP >= TPR*Hq/Hk rows (row i = token i // (Hq/Hk)), each with its own
causal length (sl_ptr holds one length per row, 0 = padding row), so a tile read once serves TPR tokens.
Two passes over the range, so neither carries the other's state:

1. record tiles (block_to_slot < 0), never materialized (the per-tile math: decode_record.py); branch-free
   over the range (a pool tile's loads are masked off and its scores are -1e30). TRIM: a pool tile at either
   end of the range (the fp16 sink, the filling tail) is left out of this pass, where it would only cost a
   masked record iteration (7-11% of the call at burst-A shapes, H200). The record's fp16 vectors are folded
   into the query and probability side, so only integer codes meet the tensor cores (method.md §1.4:
   K_hat[d,n] = (code*ks[d] + kz[d]) * kc[n], V_hat[n,d] = (code*vs[n] + vz[n]) * vc[d]):

       s[i, n] = kc[n] * ( sum_d (q[i,d] ks[d]) code_k[d, n]  +  sum_d q[i,d] kz[d] )
       o[i, d] += vc[d] * ( sum_n (p[i,n] vs[n]) code_v[n, d] +  sum_n p[i,n] vz[n] )

   q*ks/max|q| and p*vs are the fp16 dot operands (|ks|, |vs| < 65504; p <= 1). Codes enter tl.dot
   as fp16 (1024 + code): four codes per PRMT pair from one 32-bit register (``_codes_f16``), and
   the 1024 * row sums are subtracted in fp32, folded into one reduction with the zero points. Code
   bytes are stored with each product's reduction axis contiguous (K [G/KPB, D], V [D/VPB, G]), so
   Triton moves them into MMA operand registers with ldmatrix instead of one shared-memory load per
   byte. Bit plane p of a K byte holds the token range p*(G/KPB) + j: one dot per plane, and the
   scores stay per plane (V codes, row scales and masks are read for the same token range, so
   nothing is interleaved); bit plane p of a V byte holds channels VPB*e + p and feeds its own
   accumulator. Four row reductions per tile: max, sum of p, and the two folded zero-point sums.
   The per-tile load chain (block id -> pool-map entry -> K scale vectors) runs a tile ahead (AHD) and the
   record PREF tiles ahead is requested into L2, so a tile's first loads rarely wait on DRAM.
2. pool tiles (block_to_slot >= 0: sink, tail, blocks not yet flushed), fp16/bf16 rows read
   directly; found 32 block ids at a time, so pass 2 costs ~nothing where there are none. Each is read
   in PBN-row chunks, only those holding valid rows (a partly filled tail costs its rows).

NOREC=True skips pass 1 (the Gluon record pass, decode_gluon.py, reads the records, launched after this one):
pass 2 and the token sink's row only, written as one split partial, and the rotated, scaled q rows stored to qs_ptr
(fp32 [B, Hq, D] contiguous) for the Gluon pass. ALL_POOL=True compiles only a branch-free, software-pipelined pool
pass (every block is a pool slot): the benchmark's bf16/fp8 baselines. Scores are in the log2 domain. ROT=True: q arrives in
the model's frame and is rotated here (q H * q_mult, q_mult = scale * log2 e); the normalized
output is rotated back (o H) and stored in o_ptr's dtype. ROT=False (head_dim 256): q arrives
rotated and scaled in fp32 and the output stays in the rotated frame (the launcher rotates it).
"""

from __future__ import annotations

import triton
import triton.language as tl

from kvarn.kernels._common import dot_bf16_safe
from kvarn.kernels.decode_record import (
    _acc_zeros,
    _per_col,
    _per_row,
    _prefetch_l2,
    _rec_addr,
    _row_mask,
    _tile_scores,
    _tile_values,
)


@triton.jit
def _softmax_update(s, m_i, l_i):
    """s [QP, BN] log2-domain scores (masked = -inf) -> (p, alpha, m_new, l_new)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    return p, alpha, m_new, l_i * alpha + tl.sum(p, 1)


@triton.jit
def _add_per_col(a, w, SW: tl.constexpr):
    """a [QP, E] + w [E] on every row (a [E, QP] when SW; decode_record._per_col)."""
    return a + _per_col(w, SW)


@triton.jit
def _interleave(x0, x1, x2, x3, NP: tl.constexpr, M: tl.constexpr, N: tl.constexpr):
    """Planes x_p [M, N/NP] (element j of plane p = column NP*j + p) -> [M, N] in natural order."""
    if NP == 2:
        return tl.reshape(tl.join(x0, x1), [M, N])
    else:
        return tl.reshape(tl.join(tl.join(x0, x2), tl.join(x1, x3)), [M, N])


@triton.jit
def _dot_signs(x, sgn, IUP: tl.constexpr):
    """x [M, K] fp32 times a +-1 matrix sgn [K, N] (bf16) in fp32 on tensor cores: x = hi + lo in bf16 (lo
    carries the next 8 bits), both products exact against +-1 entries."""
    hi = x.to(tl.bfloat16)
    lo = (x - hi.to(tl.float32)).to(tl.bfloat16)
    y = dot_bf16_safe(hi, sgn, tl.zeros([x.shape[0], sgn.shape[1]], tl.float32), IUP)
    return dot_bf16_safe(lo, sgn, y, IUP)


@triton.jit
def _rotate_rows(x, sgn_ptr, D: tl.constexpr, IUP: tl.constexpr, RF: tl.constexpr):
    """x [M, D] fp32 -> x S, S the +-1 Sylvester matrix of order D, in fp32.

    RF False: S itself at sgn_ptr (bf16 [D, D], 32 KiB at D = 128) is one dot operand. RF True: S = H_m (x) H_16
    (m = D / 16; column 16a + b), so x S is two 16-wide products: x as [M*m, 16] times H_16 (along b), then,
    transposed to [M, 16, m] and viewed as [M*m, 16] (16/m groups of m per row), times blockdiag(H_m, ..., H_m)
    (along a), transposed back. sgn_ptr: bf16 [2, 16, 16] (H_16, the block diagonal): 1 KiB instead of 32."""
    M: tl.constexpr = x.shape[0]
    if RF:
        MM: tl.constexpr = D // 16
        r = tl.arange(0, 16)
        z = _dot_signs(tl.reshape(x, [M * MM, 16]), tl.load(sgn_ptr + r[:, None] * 16 + r[None, :]), IUP)
        zt = tl.reshape(tl.permute(tl.reshape(z, [M, MM, 16]), (0, 2, 1)), [M * MM, 16])
        w = _dot_signs(zt, tl.load(sgn_ptr + 256 + r[:, None] * 16 + r[None, :]), IUP)
        return tl.reshape(tl.permute(tl.reshape(w, [M, 16, MM]), (0, 2, 1)), [M, D])
    else:
        d = tl.arange(0, D)
        return _dot_signs(x, tl.load(sgn_ptr + d[:, None] * D + d[None, :]), IUP)


@triton.jit
def _pool_chunk(c, q_op, qa, m_i, l_i, acc, pk_ptr, pv_ptr, pbase, n_valid, lo, stride_pn, pool_k_scale, pool_v_scale,
                QP: tl.constexpr, D: tl.constexpr, BN: tl.constexpr, PDT: tl.constexpr, UPCAST: tl.constexpr,
                ROWS: tl.constexpr, VE: tl.constexpr = False):
    """Rows [c*BN, (c+1)*BN) of one fp16/bf16 pool tile into the online-softmax state. VE: the V rows are loaded
    together with the K rows (one memory round trip per chunk instead of two: the latency-bound pool pass)."""
    d = tl.arange(0, D)
    n = c * BN + tl.arange(0, BN)
    nm = n < n_valid
    kt = tl.load(pk_ptr + pbase + n[None, :] * stride_pn + d[:, None], mask=nm[None, :], other=0.0)
    if VE:
        vt = tl.load(pv_ptr + pbase + n[:, None] * stride_pn + d[None, :], mask=nm[:, None], other=0.0)
    s = dot_bf16_safe(q_op, kt.to(PDT), tl.zeros([QP, BN], tl.float32), UPCAST)
    s = tl.where(_row_mask(n, n_valid, lo, ROWS, 0, False), s * (qa * pool_k_scale)[:, None], float("-inf"))
    p, alpha, m_i, l_i = _softmax_update(s, m_i, l_i)
    if not VE:
        vt = tl.load(pv_ptr + pbase + n[:, None] * stride_pn + d[None, :], mask=nm[:, None], other=0.0)
    pv = dot_bf16_safe(p.to(PDT), vt.to(PDT), tl.zeros([QP, D], tl.float32), UPCAST)
    return m_i, l_i, acc * alpha[:, None] + pv * pool_v_scale


@triton.jit
def _pool_tile(q_op, qa, m_i, l_i, acc, pk_ptr, pv_ptr, pbase, n_valid, lo, stride_pn, pool_k_scale, pool_v_scale,
               QP: tl.constexpr, D: tl.constexpr, G: tl.constexpr, BN: tl.constexpr, PDT: tl.constexpr,
               UPCAST: tl.constexpr, ROWS: tl.constexpr, DYN: tl.constexpr = False, VE: tl.constexpr = False):
    """One fp16/bf16 pool tile [G, D] of K and V rows into the online-softmax state (ROWS: per-row causal
    lengths, see _row_mask; a row masked out here has a finite m from an earlier tile, so its p is 0, not NaN:
    pass 1, or, when TRIM left pass 1 empty, the range's first tile, where every real row has position 0; only
    padding rows, never stored, can turn NaN).
    DYN: only the ceil(min(n_valid, G) / BN) chunks holding valid rows (a partly filled tail costs its rows);
    otherwise all G / BN chunks, unrolled (branch-free, for the pipelined all-pool path). VE: see _pool_chunk."""
    if DYN:
        for c in range(tl.cdiv(tl.minimum(n_valid, G), BN)):
            m_i, l_i, acc = _pool_chunk(c, q_op, qa, m_i, l_i, acc, pk_ptr, pv_ptr, pbase, n_valid, lo, stride_pn,
                                        pool_k_scale, pool_v_scale, QP, D, BN, PDT, UPCAST, ROWS, VE)
    else:
        for c in tl.static_range(G // BN):
            m_i, l_i, acc = _pool_chunk(c, q_op, qa, m_i, l_i, acc, pk_ptr, pv_ptr, pbase, n_valid, lo, stride_pn,
                                        pool_k_scale, pool_v_scale, QP, D, BN, PDT, UPCAST, ROWS)
    return m_i, l_i, acc


@triton.jit
def _kvarn_decode_kernel(
    q_ptr, sgn_ptr, sgo_ptr, kv_ptr, kvh_ptr, pk_ptr, pv_ptr, b2s_ptr, bt_ptr, sl_ptr, o_ptr, ml_ptr,
    stride_qb, stride_qh, stride_kvb, stride_ps, stride_pn, stride_ph, stride_btb,
    stride_ob, stride_oh, stride_os, q_mult, o_mult, pool_k_scale, pool_v_scale,
    HK: tl.constexpr, QPK: tl.constexpr, QP: tl.constexpr, BN: tl.constexpr, PBN: tl.constexpr, SPLIT: tl.constexpr,
    POOL_BF16: tl.constexpr, UPCAST: tl.constexpr, IUP: tl.constexpr, ALL_POOL: tl.constexpr, TPR: tl.constexpr,
    ROT: tl.constexpr, ASM: tl.constexpr, PREF: tl.constexpr, PL: tl.constexpr, AHD: tl.constexpr, TS: tl.constexpr,
    TRIM: tl.constexpr, RF: tl.constexpr, SW: tl.constexpr,
    D: tl.constexpr, G: tl.constexpr, KB: tl.constexpr, VB: tl.constexpr, R: tl.constexpr,
    K_CODES: tl.constexpr, K_RS: tl.constexpr, K_RZ: tl.constexpr, K_CS: tl.constexpr,
    V_CODES: tl.constexpr, V_CS: tl.constexpr, V_RS: tl.constexpr, V_RZ: tl.constexpr,
    NOREC: tl.constexpr = False, qs_ptr=None, PVE: tl.constexpr = False,
):
    pid = tl.program_id(0)
    sid = tl.program_id(1)
    b = pid // HK
    hk = pid % HK
    qi = tl.arange(0, QP)
    if TPR == 1:
        seq_len = tl.load(sl_ptr + b)
        qmask = qi < QPK
        lo = qi * 0  # unused (ROWS off)
        qrow = b * stride_qb + (hk * QPK + qi) * stride_qh
    else:  # TPR tokens of one request per program: row i = token i // QPK, query head i % QPK
        tj = qi // QPK
        lrow = tl.load(sl_ptr + b * TPR + tj, mask=qi < TPR * QPK, other=0)  # causal length, 0 = padding
        seq_len = tl.max(lrow, 0)
        qmask = (qi < TPR * QPK) & (lrow > 0)
        lo = lrow - seq_len
        qrow = (b * TPR + tj) * stride_qb + (hk * QPK + qi % QPK) * stride_qh
    ROWS: tl.constexpr = TPR > 1
    n_tiles = tl.cdiv(seq_len, G)
    # split sid takes its share of this request's own tiles (not of the table's width), so every split
    # has work whatever max_model_len the block table was sized for
    tps = tl.cdiv(n_tiles, tl.num_programs(1))
    t0 = sid * tps
    t1 = tl.minimum(t0 + tps, n_tiles)

    d = tl.arange(0, D)
    q = tl.load(q_ptr + qrow[:, None] + d[None, :], mask=qmask[:, None], other=0.0).to(tl.float32)
    if ROT:
        q = _rotate_rows(q, sgn_ptr, D, IUP, RF)
    q = q * q_mult  # [QP, D] fp32, rotated, * scale * log2(e)
    if NOREC:  # the Gluon record pass reads these rows (TPR == 1)
        tl.store(qs_ptr + (b * HK * QPK + hk * QPK + qi)[:, None] * D + d[None, :], q, mask=qmask[:, None])
    qa = tl.max(tl.abs(q), 1) + 1e-30
    PDT: tl.constexpr = tl.bfloat16 if POOL_BF16 else tl.float16
    q_op = (q * (1.0 / qa)[:, None]).to(PDT)

    m_i = tl.full([QP], float("-inf"), tl.float32)
    l_i = tl.zeros([QP], tl.float32)
    bt_row = bt_ptr + b * stride_btb

    if ALL_POOL:  # branch-free: Triton software-pipelines these loads (num_stages)
        acc = tl.zeros([QP, D], tl.float32)
        for t in range(t0, t1):
            slot = tl.load(b2s_ptr + tl.load(bt_row + t).to(tl.int64))
            pbase = tl.maximum(slot, 0).to(tl.int64) * stride_ps + hk * stride_ph
            m_i, l_i, acc = _pool_tile(q_op, qa, m_i, l_i, acc, pk_ptr, pv_ptr, pbase, seq_len - t * G, lo,
                                       stride_pn, pool_k_scale, pool_v_scale, QP, D, G, BN, PDT, UPCAST, ROWS)
    else:
        KPB: tl.constexpr = 8 // KB  # codes per byte = bit planes
        VPB: tl.constexpr = 8 // VB
        jk = tl.arange(0, G // KPB)
        ev = tl.arange(0, D // VPB)
        a0 = _acc_zeros(QP, D // VPB, SW)  # channel plane p = channels VPB*e + p ([D/VPB, QP] when SW)
        a1 = _acc_zeros(QP, D // VPB, SW)
        a2 = _acc_zeros(QP, D // VPB, SW)
        a3 = _acc_zeros(QP, D // VPB, SW)
        if TS:  # sink "token": a first block that is a record keeps position 0 as an fp16 pool row (map <= -2);
            # the split holding tile 0 starts its softmax state from that row (p = 1), pass 1 masks n = 0 there
            e0 = tl.load(b2s_ptr + tl.load(bt_row).to(tl.int64))
            srow = tl.where((e0 <= -2) & (t0 < t1) & (t0 == 0), -2 - e0, -1).to(tl.int64)
            sbase = tl.maximum(srow // G * stride_ps + srow % G * stride_pn, 0) + hk * stride_ph
            sm0 = (d * 0 + srow) >= 0
            k0 = tl.load(pk_ptr + sbase + d, mask=sm0, other=0.0).to(tl.float32)
            s_0 = tl.sum(q * k0[None, :], 1) * pool_k_scale
            m_i = tl.where(srow >= 0, s_0, m_i)
            l_i = tl.where(srow >= 0, 1.0, l_i)
            vm0 = (ev * 0 + srow) >= 0
            a0 = _add_per_col(a0, tl.load(pv_ptr + sbase + VPB * ev, mask=vm0, other=0.0).to(tl.float32)
                              * pool_v_scale, SW)
            a1 = _add_per_col(a1, tl.load(pv_ptr + sbase + VPB * ev + 1, mask=vm0, other=0.0).to(tl.float32)
                              * pool_v_scale, SW)
            if VPB == 4:
                a2 = _add_per_col(a2, tl.load(pv_ptr + sbase + VPB * ev + 2, mask=vm0, other=0.0).to(tl.float32)
                                  * pool_v_scale, SW)
                a3 = _add_per_col(a3, tl.load(pv_ptr + sbase + VPB * ev + 3, mask=vm0, other=0.0).to(tl.float32)
                                  * pool_v_scale, SW)
        # pass 1: the tiles of the range through the record math, branch-free; a pool tile's loads are masked
        # off and its scores dropped. TRIM: a pool tile at either end of the range (the fp16 sink first, the
        # filling tail last) is left out of pass 1 altogether (pass 2 reads it), so only pool tiles in the
        # middle (blocks not flushed yet) still cost a masked record iteration.
        if not NOREC:  # pass 1 (the Gluon pass reads the records when NOREC)
            r0 = t0
            r1 = t1
            if TRIM:
                e_lo = tl.load(b2s_ptr + tl.load(bt_row + tl.maximum(tl.minimum(t0, t1 - 1), 0)).to(tl.int64))
                e_hi = tl.load(b2s_ptr + tl.load(bt_row + tl.maximum(t1 - 1, 0)).to(tl.int64))
                r0 = t0 + ((e_lo >= 0) & (t0 < t1)).to(tl.int32)
                r1 = t1 - ((e_hi >= 0) & (t1 - 1 >= r0)).to(tl.int32)
            q_un = q * (1.0 / qa)[:, None]  # rows scaled to max |q| = 1
            q_k = q_un
            if SW:
                q_k = tl.trans(q_un)  # [D, QP]
            ksb = kvh_ptr + K_RS // 2 + d
            NL: tl.constexpr = (R + 127) // 128
            # PREF > 0: the record PREF tiles ahead is requested into L2 at the top of each tile (its block id
            # was loaded one tile earlier, so nothing here waits on memory)
            if PREF > 0:
                nxt = tl.load(bt_row + tl.maximum(tl.minimum(r0 + PREF, r1 - 1), 0)).to(tl.int64)
            # AHD > 0: the per-tile load chain (block id -> pool-map entry [-> K scale vectors, AHD 2]) runs
            # ahead of the tile that uses it: ids two tiles ahead, map entries [and scales] one tile ahead
            if AHD > 0:
                live = r0 < r1  # an empty range (split past the end, graph padding) reads block 0's entries
                b_nx = tl.where(live, tl.load(bt_row + tl.maximum(tl.minimum(r0, r1 - 1), 0)), 0).to(tl.int64)
                b_nx2 = tl.load(bt_row + tl.maximum(tl.minimum(r0 + 1, r1 - 1), 0)).to(tl.int64)
                e_nx = tl.load(b2s_ptr + b_nx)
                if AHD > 1:  # a pool tile's page is a valid block, read unmasked; its scores are dropped below
                    h_nx = (b_nx * stride_kvb + hk * R) // 2  # the record's fp16 offset
                    ks_nx = tl.load(ksb + h_nx)
                    kz_nx = tl.load(kvh_ptr + h_nx + K_RZ // 2 + d)
            for t in range(r0, r1):
                if PREF > 0:
                    _prefetch_l2(kv_ptr + nxt * stride_kvb + hk * R, PL, NL)
                    nxt = tl.load(bt_row + tl.minimum(t + PREF + 1, r1 - 1)).to(tl.int64)
                if AHD > 0:
                    blk = b_nx
                    ent = e_nx
                    e_nx = tl.load(b2s_ptr + b_nx2)
                    if AHD > 1:
                        ks = ks_nx.to(tl.float32)
                        kz = kz_nx.to(tl.float32)
                        h_nx = (b_nx2 * stride_kvb + hk * R) // 2
                        ks_nx = tl.load(ksb + h_nx)
                        kz_nx = tl.load(kvh_ptr + h_nx + K_RZ // 2 + d)
                    b_nx = b_nx2
                    b_nx2 = tl.load(bt_row + tl.minimum(t + 2, r1 - 1)).to(tl.int64)
                else:
                    blk = tl.load(bt_row + t).to(tl.int64)
                    ent = tl.load(b2s_ptr + blk)
                nlo, md, me, n_valid, rb, hb = _rec_addr(blk, ent, t, seq_len, stride_kvb, hk, d, ev, G, R)
                if AHD < 2:
                    ks = tl.load(ksb + hb, mask=md, other=0.0).to(tl.float32)
                    kz = tl.load(kvh_ptr + hb + K_RZ // 2 + d, mask=md, other=0.0).to(tl.float32)
                s0, s1, s2, s3, n0, n1, n2, n3, mx = _tile_scores(
                    q_k, qa, ks, kz, kv_ptr, kvh_ptr, rb, hb, n_valid, lo, nlo, md, d, jk, K_CODES, K_CS, KB, KPB, G,
                    D, ASM, ROWS, TS, SW)
                m_new = tl.maximum(m_i, mx)
                alpha = tl.exp2(m_i - m_new)
                m_i = m_new
                ps, v0, v1, v2, v3 = _tile_values(
                    s0, s1, s2, s3, n0, n1, n2, n3, n_valid, lo, nlo, m_new, kv_ptr, kvh_ptr, rb, hb, me, ev, V_CODES,
                    V_CS, V_RS, V_RZ, G, VB, VPB, KPB, QP, D, ASM, ROWS, TS, SW)
                l_i = l_i * alpha + ps
                a0 = a0 * _per_row(alpha, SW) + v0
                a1 = a1 * _per_row(alpha, SW) + v1
                if VPB == 4:
                    a2 = a2 * _per_row(alpha, SW) + v2
                    a3 = a3 * _per_row(alpha, SW) + v3
        if SW:
            acc = _interleave(tl.trans(a0), tl.trans(a1), tl.trans(a2), tl.trans(a3), VPB, QP, D)
        else:
            acc = _interleave(a0, a1, a2, a3, VPB, QP, D)
        # pass 2: pool tiles, located 32 block ids at a time
        TC: tl.constexpr = 32
        tc = tl.arange(0, TC)
        for c0 in range(t0, t1, TC):
            tt = c0 + tc
            tm = tt < t1
            slots = tl.load(b2s_ptr + tl.load(bt_row + tt, mask=tm, other=0).to(tl.int64), mask=tm, other=-1)
            todo = tm & (slots >= 0)
            for _ in range(tl.sum(todo.to(tl.int32), 0)):
                t = tl.min(tl.where(todo, tt, 2147483647), 0)
                slot = tl.max(tl.where(tt == t, slots, -1), 0)
                todo = todo & (tt != t)
                pbase = slot.to(tl.int64) * stride_ps + hk * stride_ph
                m_i, l_i, acc = _pool_tile(q_op, qa, m_i, l_i, acc, pk_ptr, pv_ptr, pbase, seq_len - t * G, lo,
                                           stride_pn, pool_k_scale, pool_v_scale, QP, D, G, PBN, PDT, UPCAST, ROWS,
                                           PBN < G, PVE)

    hq = hk * QPK + qi
    if SPLIT:  # one token per program (the launcher never splits TPR > 1)
        obase = b * stride_ob + hq * stride_oh + sid * stride_os
        tl.store(o_ptr + obase[:, None] + d[None, :], acc, mask=qmask[:, None])
        tl.store(ml_ptr + 2 * (obase // D), m_i, mask=qmask)
        tl.store(ml_ptr + 2 * (obase // D) + 1, l_i, mask=qmask)
    else:
        out = acc / tl.maximum(l_i, 1e-30)[:, None]  # empty rows (seq_len 0: CUDA-graph padding) -> 0
        if ROT:
            out = _rotate_rows(out, sgo_ptr, D, IUP, RF) * o_mult  # sgo_ptr = sgn_ptr: not held across the loops
        if TPR == 1:
            orow = b * stride_ob + hq * stride_oh
        else:
            orow = (b * TPR + qi // QPK) * stride_ob + (hk * QPK + qi % QPK) * stride_oh
        tl.store(o_ptr + orow[:, None] + d[None, :], out.to(o_ptr.dtype.element_ty), mask=qmask[:, None])


@triton.jit
def _combine_kernel(part_ptr, ml_ptr, sgn_ptr, o_ptr, S, stride_ob, stride_oh, o_mult,
                    HK: tl.constexpr, QPK: tl.constexpr, QP: tl.constexpr, D: tl.constexpr,
                    ROT: tl.constexpr, IUP: tl.constexpr, RF: tl.constexpr, SP: tl.constexpr = 0):
    """Merge the S split partials of the QPK query heads of one (b, KV head): part [B, Hq, S, D]
    fp32 (unnormalized, rotated frame), ml [B, Hq, S, 2] (max, sum); log-sum-exp merge, normalize,
    rotate back (ROT) and store [QPK, D] in o_ptr's dtype. SP = next_pow2(S) > 0: every partial in one load
    ([QP, SP, D], one memory round trip); 0: one partial per loop step (S dependent round trips)."""
    pid = tl.program_id(0)
    b = pid // HK
    hk = pid % HK
    qi = tl.arange(0, QP)
    d = tl.arange(0, D)
    qmask = qi < QPK
    row = b * HK * QPK + hk * QPK + qi  # flattened (b, hq)
    if SP > 0:
        si = tl.arange(0, SP)
        rs = row[:, None] * S + si[None, :]  # [QP, SP]
        sm = qmask[:, None] & (si < S)[None, :]
        ms = tl.load(ml_ptr + rs * 2, mask=sm, other=float("-inf"))
        ls = tl.load(ml_ptr + rs * 2 + 1, mask=sm, other=0.0)
        ps = tl.load(part_ptr + rs[:, :, None] * D + d[None, None, :], mask=sm[:, :, None], other=0.0)
        m = tl.max(ms, 1)
        w = tl.where((m > float("-inf"))[:, None], tl.exp2(ms - m[:, None]), 0.0)  # masked slots: exp2(-inf) = 0
        l = tl.sum(ls * w, 1)
        acc = tl.sum(ps * w[:, :, None], 1)
    else:
        m = tl.full([QP], float("-inf"), tl.float32)
        l = tl.zeros([QP], tl.float32)
        acc = tl.zeros([QP, D], tl.float32)
        for s in range(S):
            ms = tl.load(ml_ptr + (row * S + s) * 2, mask=qmask, other=float("-inf"))
            ls = tl.load(ml_ptr + (row * S + s) * 2 + 1, mask=qmask, other=0.0)
            ps = tl.load(part_ptr + (row * S + s)[:, None] * D + d[None, :], mask=qmask[:, None], other=0.0)
            m_new = tl.maximum(m, ms)
            live = m_new > float("-inf")
            a_old = tl.where(live, tl.exp2(m - m_new), 0.0)
            a_new = tl.where(live, tl.exp2(ms - m_new), 0.0)
            acc = acc * a_old[:, None] + ps * a_new[:, None]
            l = l * a_old + ls * a_new
            m = m_new
    out = acc / tl.maximum(l, 1e-30)[:, None]
    if ROT:
        out = _rotate_rows(out, sgn_ptr, D, IUP, RF) * o_mult
    tl.store(o_ptr + b * stride_ob + (hk * QPK + qi)[:, None] * stride_oh + d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=qmask[:, None])
