"""The Triton program of fused kvarn decode attention (launched by decode_attention.py).

Program (b, h, split): all Hq/Hk query heads of KV head h (QP >= 16 rows for tl.dot), tiles t of
request b in the split's range; (blk, slot) of tile t+1 is prefetched while tile t computes.

* pool tile (block_to_slot >= 0): rotated fp16/bf16 rows, read directly;
* record tile: never materialized. The record's fp16 vectors are folded into the query and
  probability side, so only integer codes meet the tensor cores (method.md §1.4:
  K_hat[d,n] = (code*ks[d] + kz[d]) * kc[n], V_hat[n,d] = (code*vs[n] + vz[n]) * vc[d]):

      s[i, n] = kc[n] * ( sum_d (q[i,d] ks[d]) code_k[d, n]  +  sum_d q[i,d] kz[d] )
      o[i, d] += vc[d] * ( sum_n (p[i,n] vs[n]) code_v[n, d] +  sum_n p[i,n] vz[n] )

  q*ks and p*vs are divided by their row max before the fp16 cast (max multiplied back in fp32).
  Codes enter tl.dot as fp16 (1024 + code) built with an integer OR (_f16_1024) and the 1024 *
  row-sum is subtracted in fp32. Bit plane p of a K byte row holds tokens KPB*j + p: one dot per
  plane, plane scores interleaved to token order ([QP, BN], small); bit plane p of a V byte row
  holds channels VPB*e + p and feeds its own accumulator, interleaved to channel order at the end.

ALL_POOL=True compiles only the (branch-free, software-pipelined) pool path: every block must be
a pool slot. The benchmark's bf16/fp8 baselines use it. Scores are in the log2 domain (q
pre-multiplied by scale * log2 e by the launcher).
"""

from __future__ import annotations

import triton
import triton.language as tl

from kvarn.kernels._common import dot_bf16_safe


@triton.jit
def _softmax_update(s, m_i, l_i):
    """s [QP, BN] log2-domain scores (masked = -inf) -> (p, alpha, m_new, l_new)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    return p, alpha, m_new, l_i * alpha + tl.sum(p, 1)


@triton.jit
def _interleave(x0, x1, x2, x3, NP: tl.constexpr, M: tl.constexpr, N: tl.constexpr):
    """Planes x_p [M, N/NP] (element j of plane p = column NP*j + p) -> [M, N] in natural order."""
    if NP == 2:
        return tl.reshape(tl.join(x0, x1), [M, N])
    else:
        return tl.reshape(tl.join(tl.join(x0, x2), tl.join(x1, x3)), [M, N])


@triton.jit
def _f16_1024(c):
    """Integer codes c (< 1024) -> fp16 (1024 + c) by OR-ing the exponent bits: no int->float
    conversion instruction (those issue at a fraction of the ALU rate and bound a naive dequant)."""
    return (c.to(tl.int16) | 0x6400).to(tl.float16, bitcast=True)


@triton.jit
def _kvarn_decode_kernel(
    q_ptr, kv_ptr, kvh_ptr, pk_ptr, pv_ptr, b2s_ptr, bt_ptr, sl_ptr, o_ptr, ml_ptr,
    stride_qb, stride_qh, stride_kvb, stride_ps, stride_pn, stride_ph, stride_btb,
    stride_ob, stride_oh, stride_os, tiles_per_split, pool_k_scale, pool_v_scale,
    HK: tl.constexpr, QPK: tl.constexpr, QP: tl.constexpr, BN: tl.constexpr, SPLIT: tl.constexpr,
    POOL_BF16: tl.constexpr, UPCAST: tl.constexpr, ALL_POOL: tl.constexpr,
    D: tl.constexpr, G: tl.constexpr, KB: tl.constexpr, VB: tl.constexpr, R: tl.constexpr,
    K_CODES: tl.constexpr, K_RS: tl.constexpr, K_RZ: tl.constexpr, K_CS: tl.constexpr,
    V_CODES: tl.constexpr, V_CS: tl.constexpr, V_RS: tl.constexpr, V_RZ: tl.constexpr,
):
    pid = tl.program_id(0)
    sid = tl.program_id(1)
    b = pid // HK
    hk = pid % HK
    seq_len = tl.load(sl_ptr + b)
    n_tiles = tl.cdiv(seq_len, G)
    t0 = sid * tiles_per_split
    t1 = tl.minimum(t0 + tiles_per_split, n_tiles)

    qi = tl.arange(0, QP)
    d = tl.arange(0, D)
    qmask = qi < QPK
    q = tl.load(q_ptr + b * stride_qb + (hk * QPK + qi)[:, None] * stride_qh + d[None, :],
                mask=qmask[:, None], other=0.0)  # fp32 [QP, D], rotated, * scale * log2(e)
    qa = tl.max(tl.abs(q), 1) + 1e-30
    PDT: tl.constexpr = tl.bfloat16 if POOL_BF16 else tl.float16
    q_op = (q * (1.0 / qa)[:, None]).to(PDT)

    KPB: tl.constexpr = 8 // KB  # codes per byte = bit planes
    VPB: tl.constexpr = 8 // VB
    KM: tl.constexpr = (1 << KB) - 1
    VM: tl.constexpr = (1 << VB) - 1
    jk = tl.arange(0, BN // KPB)
    ev = tl.arange(0, D // VPB)

    m_i = tl.full([QP], float("-inf"), tl.float32)
    l_i = tl.zeros([QP], tl.float32)
    acc = tl.zeros([QP, D], tl.float32)
    a0 = tl.zeros([QP, D // VPB], tl.float32)  # folded records: channel plane p = channels VPB*e + p
    a1 = tl.zeros([QP, D // VPB], tl.float32)
    a2 = tl.zeros([QP, D // VPB], tl.float32)
    a3 = tl.zeros([QP, D // VPB], tl.float32)

    has = t0 < t1
    blk_n = tl.load(bt_ptr + b * stride_btb + t0, mask=has, other=0).to(tl.int64)
    slot_n = tl.load(b2s_ptr + blk_n, mask=has, other=0)
    for t in range(t0, t1):
        blk = blk_n
        slot = slot_n
        nxt = t + 1 < t1  # prefetch the next tile's block id and slot
        blk_n = tl.load(bt_ptr + b * stride_btb + t + 1, mask=nxt, other=0).to(tl.int64)
        slot_n = tl.load(b2s_ptr + blk_n, mask=nxt, other=0)
        n_valid = seq_len - t * G
        pbase = tl.maximum(slot, 0).to(tl.int64) * stride_ps + hk * stride_ph
        if ALL_POOL:  # branch-free: Triton software-pipelines these loads (num_stages)
            for c in tl.static_range(G // BN):
                n = c * BN + tl.arange(0, BN)
                nm = n < n_valid
                kt = tl.load(pk_ptr + pbase + n[None, :] * stride_pn + d[:, None], mask=nm[None, :], other=0.0)
                s = dot_bf16_safe(q_op, kt.to(PDT), tl.zeros([QP, BN], tl.float32), UPCAST)
                s = tl.where(nm[None, :], s * (qa * pool_k_scale)[:, None], float("-inf"))
                p, alpha, m_i, l_i = _softmax_update(s, m_i, l_i)
                vt = tl.load(pv_ptr + pbase + n[:, None] * stride_pn + d[None, :], mask=nm[:, None], other=0.0)
                pv = dot_bf16_safe(p.to(PDT), vt.to(PDT), tl.zeros([QP, D], tl.float32), UPCAST)
                acc = acc * alpha[:, None] + pv * pool_v_scale
        elif slot >= 0:  # pool tile (sink, tail, not yet flushed): fp16 rows
            for c in tl.static_range(G // BN):
                n = c * BN + tl.arange(0, BN)
                nm = n < n_valid
                kt = tl.load(pk_ptr + pbase + n[None, :] * stride_pn + d[:, None], mask=nm[None, :], other=0.0)
                s = dot_bf16_safe(q_op, kt.to(PDT), tl.zeros([QP, BN], tl.float32), UPCAST)
                s = tl.where(nm[None, :], s * (qa * pool_k_scale)[:, None], float("-inf"))
                p, alpha, m_i, l_i = _softmax_update(s, m_i, l_i)
                vt = tl.load(pv_ptr + pbase + n[:, None] * stride_pn + d[None, :], mask=nm[:, None], other=0.0)
                pv = dot_bf16_safe(p.to(PDT), vt.to(PDT), tl.zeros([QP, D], tl.float32), UPCAST)
                acc = acc * alpha[:, None] + pv * pool_v_scale
                a0 = a0 * alpha[:, None]
                a1 = a1 * alpha[:, None]
                a2 = a2 * alpha[:, None]
                a3 = a3 * alpha[:, None]
        else:  # record tile: folded scales, codes as fp16 (1024 + code) straight into tl.dot
            rb = blk * stride_kvb + hk * R  # byte offset of the record
            hb = rb // 2  # fp16 element offset (R and all scale offsets are even)
            ks = tl.load(kvh_ptr + hb + K_RS // 2 + d).to(tl.float32)
            kz = tl.load(kvh_ptr + hb + K_RZ // 2 + d).to(tl.float32)
            qk = q * ks[None, :]
            qka = tl.max(tl.abs(qk), 1) + 1e-30
            qk_op = (qk * (1.0 / qka)[:, None]).to(tl.float16)
            # (qk_op . (1024 + code)) - 1024 * sum(qk_op) = qk_op . code
            qz = tl.sum(q * kz[None, :], 1) / qka - 1024.0 * tl.sum(qk_op.to(tl.float32), 1)
            vcb = kvh_ptr + hb + V_CS // 2 + VPB * ev
            vc0 = tl.load(vcb + 0).to(tl.float32)
            vc1 = tl.load(vcb + 1).to(tl.float32)
            if VPB == 4:
                vc2 = tl.load(vcb + 2).to(tl.float32)
                vc3 = tl.load(vcb + 3).to(tl.float32)
            for c in tl.static_range(G // BN):
                n = c * BN + tl.arange(0, BN)
                nm = n < n_valid
                kb = tl.load(kv_ptr + rb + K_CODES + d[:, None] * (G // KPB) + (c * (BN // KPB) + jk)[None, :])
                zk = tl.zeros([QP, BN // KPB], tl.float32)
                s0 = tl.dot(qk_op, _f16_1024(kb & KM), zk)
                s1 = tl.dot(qk_op, _f16_1024((kb >> KB) & KM), zk)
                if KPB == 4:
                    s2 = tl.dot(qk_op, _f16_1024((kb >> 4) & KM), zk)
                    s3 = tl.dot(qk_op, _f16_1024(kb >> 6), zk)
                else:
                    s2 = s0
                    s3 = s1
                sq = _interleave(s0, s1, s2, s3, KPB, QP, BN)
                kcs = tl.load(kvh_ptr + hb + K_CS // 2 + n).to(tl.float32)
                s = tl.where(nm[None, :], ((sq + qz[:, None]) * qka[:, None]) * kcs[None, :], float("-inf"))
                p, alpha, m_i, l_i = _softmax_update(s, m_i, l_i)
                vs = tl.load(kvh_ptr + hb + V_RS // 2 + n).to(tl.float32)
                vz = tl.load(kvh_ptr + hb + V_RZ // 2 + n).to(tl.float32)
                pvs = p * vs[None, :]
                pva = tl.max(tl.abs(pvs), 1) + 1e-30
                pv_op = (pvs * (1.0 / pva)[:, None]).to(tl.float16)
                pz = (tl.sum(p * vz[None, :], 1) / pva - 1024.0 * tl.sum(pv_op.to(tl.float32), 1))[:, None]
                vb = tl.load(kv_ptr + rb + V_CODES + n[:, None] * (D // VPB) + ev[None, :])
                zv = tl.zeros([QP, D // VPB], tl.float32)
                pw = pva[:, None]
                acc = acc * alpha[:, None]
                a0 = a0 * alpha[:, None] + (tl.dot(pv_op, _f16_1024(vb & VM), zv) + pz) * pw * vc0[None, :]
                a1 = a1 * alpha[:, None] + (tl.dot(pv_op, _f16_1024((vb >> VB) & VM), zv) + pz) * pw * vc1[None, :]
                if VPB == 4:
                    a2 = a2 * alpha[:, None] + (tl.dot(pv_op, _f16_1024((vb >> 4) & VM), zv) + pz) * pw * vc2[None, :]
                    a3 = a3 * alpha[:, None] + (tl.dot(pv_op, _f16_1024(vb >> 6), zv) + pz) * pw * vc3[None, :]

    if not ALL_POOL:
        acc = acc + _interleave(a0, a1, a2, a3, VPB, QP, D)
    hq = hk * QPK + qi
    if SPLIT:
        obase = b * stride_ob + hq * stride_oh + sid * stride_os
        tl.store(o_ptr + obase[:, None] + d[None, :], acc, mask=qmask[:, None])
        tl.store(ml_ptr + 2 * (obase // D), m_i, mask=qmask)
        tl.store(ml_ptr + 2 * (obase // D) + 1, l_i, mask=qmask)
    else:
        out = acc / tl.maximum(l_i, 1e-30)[:, None]  # empty rows (seq_len 0: CUDA-graph padding) -> 0
        tl.store(o_ptr + b * stride_ob + hq[:, None] * stride_oh + d[None, :], out, mask=qmask[:, None])
