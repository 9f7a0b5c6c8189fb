"""The pool programs of the Gluon decode launch (decode_gluon.py), its in-kernel q rotation, and the q rotation launch
used when that is off.

Fused path (decode_attention.GLUON_POOL_FUSED, the default): one Gluon launch holds both kinds of program, so the
fp16 pool tiles (the sink, the filling tail, blocks not flushed yet) are read while record tiles stream, instead of
in a latency-bound launch of their own before them (13 us of a 107 us call at 32 x 8,192 on the H200, 2026-12-01):

    Gluon launch (B*Hk, S+P)  programs (b*Hk + h, s < S): record split s; (.., S + u): pool program u (this file),
                              started after the record splits (decode_gluon.GLUON_POOL_LAST); every program rotates
                              its 4 query rows itself (_q_rows: q S * scale * log2 e / sqrt(D), a fast Walsh-Hadamard
                              transform in fp32 by lane shuffles; decode_attention.GLUON_QROT)
    merge                     the last program of each (request, KV head) merges the S record partials and the P
                              pool partials, rotates back and stores (decode_gluon_merge.py; or the split-K
                              combine launch, decode_attention.GLUON_MERGE off)

With GLUON_QROT off, _rotate_q_kernel (one Triton program per request, two 16-wide products on tensor cores, exact
terms) writes the rotated rows first and the Gluon programs read them.

Pool program u of request b, KV head h takes the u-th of P shares of the request's own tiles (as the Triton pool
pass: ceil(n/P) each), finds its pool tiles 32 block ids at a time, and reads each in PBN-row chunks, only those
holding valid rows (rows n < seq_len - t*G), K and V rows loaded together:

    s[n, i] = (K[n, :] . q_un[:, i]) * qa[i] * pool_k_scale      (q_un = q rows / max|q|, fp16/bf16 as the pool)
    o[d, i] = o[d, i] * alpha[i] + pool_v_scale * sum_n V[n, d] p[n, i]

The share holding tile 0 starts its state from the token sink's fp16 row (``KVARN_SINK=token``, map entry <= -2)
when there is one: m = its score, l = 1, o = its value row. The result is split partial S + u ([D, QPK] unnormalized,
max, sum), merged with the record splits' (module doc above).
"""
from __future__ import annotations

import triton
import triton.language as tl

from kvarn.kernels._common import GLUON
from kvarn.kernels.decode_kernel import _rotate_rows

if GLUON:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import mma_v2


@triton.jit
def _rotate_q_kernel(q_ptr, sgn_ptr, qs_ptr, stride_qb, stride_qh, q_mult, HQ: tl.constexpr, QP: tl.constexpr,
                     D: tl.constexpr, IUP: tl.constexpr, RF: tl.constexpr):
    """Program b: q rows [HQ, D] of request b (any float dtype, strided) -> qs [b, :, :] fp32 contiguous,
    (q S) * q_mult with S the +-1 Sylvester matrix (decode_kernel._rotate_rows; QP = next_pow2(HQ) >= 16)."""
    b = tl.program_id(0)
    qi = tl.arange(0, QP)
    d = tl.arange(0, D)
    qm = qi < HQ
    q = tl.load(q_ptr + b * stride_qb + qi[:, None] * stride_qh + d[None, :], mask=qm[:, None], other=0.0)
    q = _rotate_rows(q.to(tl.float32), sgn_ptr, D, IUP, RF) * q_mult
    tl.store(qs_ptr + (b * HQ + qi)[:, None] * D + d[None, :], q, mask=qm[:, None])


if GLUON:

    @gluon.jit
    def _shfl_xor(x, M: gl.constexpr):
        """x (fp32) of lane l <- x of lane l ^ M, per register (every lane of the warp takes part)."""
        return gl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, " + M.__str__() + ", 0x1f, 0xffffffff;",
                                         "=r,r", [x], dtype=gl.float32, is_pure=True, pack=1)

    @gluon.jit
    def _fwht32(x, r):
        """x [32, 4] (row r = lane) -> H_32 x along the rows (unnormalized Sylvester): five butterfly stages across
        lanes, (a, b) -> (a + b, a - b) with a the lane whose bit is 0."""
        for h in gl.static_range(5):
            p = _shfl_xor(x, 1 << h)
            x = gl.where(((r & (1 << h)) != 0)[:, None], p - x, x + p)
        return x

    @gluon.jit
    def _fwht128(x0, x1, x2, x3, r):
        """The four pieces x_c [32, 4] (channel 32c + lane, row r = lane) of a [128, 4] tensor -> the pieces of
        S x along the 128 channels, S the unnormalized Sylvester matrix: H_32 within each piece (``_fwht32``), then
        H_2 (x) H_2 across them (channel bit 5 = bit 0 of c, bit 6 = bit 1). Used by the q rotation and, since S is
        symmetric, by the merge's rotation back (decode_gluon_merge)."""
        x0 = _fwht32(x0, r)
        x1 = _fwht32(x1, r)
        x2 = _fwht32(x2, r)
        x3 = _fwht32(x3, r)
        y0 = x0 + x1
        y1 = x0 - x1
        y2 = x2 + x3
        y3 = x2 - x3
        return y0 + y2, y1 + y3, y0 - y2, y1 - y3

    @gluon.jit
    def _q_rows(q_ptr, b, hk, stride_qb, stride_qh, q_mult, QROT: gl.constexpr, NW: gl.constexpr):
        """q^T [128, 4] fp32 (rotated, * scale * log2 e) of (request b, KV head hk)'s 4 query rows, in the layout
        BlockedLayout([1, 4], [32, 1], [NW, 1]). QROT: q_ptr is q in the model's frame (any float dtype, rows
        strided, channels contiguous), rotated here: q S * q_mult, S the +-1 Sylvester matrix of order 128, by a fast
        Walsh-Hadamard transform in fp32 (channel d = 32c + lane: 4 pieces [32, 4] with both warps on the query
        rows; 5 butterfly stages by lane shuffles, 2 between pieces), then joined and converted into the layout.
        Else q_ptr holds those rows already (fp32, _rotate_q_kernel)."""
        QPK: gl.constexpr = 4
        D: gl.constexpr = 128
        qbl: gl.constexpr = gl.BlockedLayout([1, QPK], [32, 1], [NW, 1], [1, 0])
        base = q_ptr + b * stride_qb + hk * QPK * stride_qh
        if QROT:
            pl: gl.constexpr = gl.BlockedLayout([1, 2], [32, 1], [1, NW], [0, 1])  # [32, 4]: lane = channel
            r = gl.arange(0, 32, layout=gl.SliceLayout(1, pl))
            i = gl.arange(0, QPK, layout=gl.SliceLayout(0, pl))
            off = i[None, :] * stride_qh + r[:, None]
            z0, z1, z2, z3 = _fwht128(gl.load(base + off).to(gl.float32), gl.load(base + off + 32).to(gl.float32),
                                      gl.load(base + off + 64).to(gl.float32), gl.load(base + off + 96).to(gl.float32),
                                      r)
            j = gl.join(gl.join(z0, z1), gl.join(z2, z3))  # [32, 4, 2 (bit 5), 2 (bit 6)]
            qt = gl.convert_layout(gl.reshape(gl.permute(j, (3, 2, 0, 1)), [D, QPK]), qbl) * q_mult
        else:
            qd = gl.arange(0, D, layout=gl.SliceLayout(1, qbl))
            qn = gl.arange(0, QPK, layout=gl.SliceLayout(0, qbl))
            qt = gl.load(base + qn[None, :] * stride_qh + qd[:, None]).to(gl.float32)
        return qt

    @gluon.jit
    def _pool_program(qs_ptr, pk_ptr, pv_ptr, b2s_ptr, bt_ptr, sl_ptr, part_ptr, ml_ptr, b, hk, u, slot,
                      stride_ps, stride_pn, stride_ph, stride_btb, stride_pb, stride_ph_out, stride_ps_out,
                      pool_k_scale, pool_v_scale, stride_qb, stride_qh, q_mult,
                      HK: gl.constexpr, NW: gl.constexpr, TS: gl.constexpr, P: gl.constexpr, PBN: gl.constexpr,
                      PDT: gl.constexpr, QROT: gl.constexpr):
        """Pool program u of (request b, KV head hk) into split partial ``slot`` (module doc)."""
        QPK: gl.constexpr = 4
        D: gl.constexpr = 128
        G: gl.constexpr = 128
        TC: gl.constexpr = 32
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[NW, 1], instr_shape=[16, 8])
        opa: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=4)
        opb: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=4)
        rows: gl.constexpr = gl.SliceLayout(1, mma)  # per pool row (scores) / per channel (accumulator)
        cols: gl.constexpr = gl.SliceLayout(0, mma)  # per query row
        qbl: gl.constexpr = gl.BlockedLayout([1, QPK], [32, 1], [NW, 1], [1, 0])  # q^T [128, 4]
        rbl: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [NW, 1], [1, 0])  # [PBN, 128] 16-bit rows, 16 B each
        tcl: gl.constexpr = gl.BlockedLayout([1], [32], [NW], [0])  # 32 block ids

        seq_len = gl.load(sl_ptr + b)
        n_tiles = gl.cdiv(seq_len, G)
        tps = gl.cdiv(n_tiles, P)
        t0 = u * tps
        t1 = gl.minimum(t0 + tps, n_tiles)
        bt_row = bt_ptr + b * stride_btb

        qd = gl.arange(0, D, layout=gl.SliceLayout(1, qbl))
        qt = _q_rows(qs_ptr, b, hk, stride_qb, stride_qh, q_mult, QROT, NW)  # [D, 4] fp32
        qa = gl.max(gl.abs(qt), 0) + 1e-30
        q_op = gl.convert_layout((qt * (1.0 / qa)[None, :]).to(PDT), opb)
        qk_c = gl.convert_layout(qa * pool_k_scale, cols)

        m_i = gl.full([QPK], -1e30, gl.float32, layout=cols)
        l_i = gl.zeros([QPK], gl.float32, layout=cols)
        acc = gl.zeros([D, QPK], gl.float32, layout=mma)
        dr = gl.arange(0, D, layout=rows)
        if TS:  # the token sink's row, for the share that holds tile 0
            e0 = gl.load(b2s_ptr + gl.load(bt_row).to(gl.int64))
            srow = gl.where((e0 <= -2) & (t0 < t1) & (t0 == 0), -2 - e0, -1).to(gl.int64)
            sbase = gl.maximum(srow // G * stride_ps + srow % G * stride_pn, 0) + hk * stride_ph
            k0 = gl.load(pk_ptr + sbase + qd, mask=(qd * 0 + srow) >= 0, other=0.0).to(gl.float32)
            s_0 = gl.convert_layout(gl.sum(qt * k0[:, None], 0), cols) * pool_k_scale
            m_i = gl.where(srow >= 0, s_0, m_i)
            l_i = gl.where(srow >= 0, 1.0, l_i)
            v0 = gl.load(pv_ptr + sbase + dr, mask=(dr * 0 + srow) >= 0, other=0.0).to(gl.float32)
            acc = acc + (v0 * pool_v_scale)[:, None]

        rn = gl.arange(0, PBN, layout=gl.SliceLayout(1, rbl))
        rd = gl.arange(0, D, layout=gl.SliceLayout(0, rbl))
        sn = gl.arange(0, PBN, layout=rows)
        zs = gl.zeros([PBN, QPK], gl.float32, layout=mma)
        tc = gl.arange(0, TC, layout=tcl)
        for c0 in range(t0, t1, TC):
            tt = c0 + tc
            tm = tt < t1
            slots = gl.load(b2s_ptr + gl.load(bt_row + tt, mask=tm, other=0).to(gl.int64), mask=tm, other=-1)
            todo = tm & (slots >= 0)
            for _ in range(gl.sum(todo.to(gl.int32), 0)):
                t = gl.min(gl.where(todo, tt, 2147483647), 0)
                ps = gl.max(gl.where(tt == t, slots, -1), 0)
                todo = todo & (tt != t)
                pbase = ps.to(gl.int64) * stride_ps + hk * stride_ph
                n_valid = seq_len - t * G
                for c in range(gl.cdiv(gl.minimum(n_valid, G), PBN)):
                    n = c * PBN + rn
                    off = pbase + n[:, None] * stride_pn + rd[None, :]
                    nm = (n < n_valid)[:, None]
                    kt = gl.load(pk_ptr + off, mask=nm, other=0.0)
                    vt = gl.load(pv_ptr + off, mask=nm, other=0.0)
                    ok = (c * PBN + sn) < n_valid
                    s = mma_v2(gl.convert_layout(kt, opa), q_op, zs)
                    s = gl.where(ok[:, None], s * qk_c[None, :], -1e30)
                    m_new = gl.maximum(m_i, gl.max(s, 0))
                    alpha = gl.exp2(m_i - m_new)
                    p = gl.where(ok[:, None], gl.exp2(s - m_new[None, :]), 0.0)
                    l_i = l_i * alpha + gl.sum(p, 0)
                    pv = mma_v2(gl.convert_layout(gl.permute(vt, (1, 0)), opa), gl.convert_layout(p.to(PDT), opb),
                                gl.zeros([D, QPK], gl.float32, layout=mma))
                    acc = acc * alpha[None, :] + pv * pool_v_scale
                    m_i = m_new

        r = gl.arange(0, QPK, layout=cols)
        prow = b * stride_pb + (hk * QPK + r) * stride_ph_out + slot * stride_ps_out  # [4]
        gl.store(part_ptr + prow[None, :] + dr[:, None], acc)
        gl.store(ml_ptr + 2 * (prow // D), m_i)
        gl.store(ml_ptr + 2 * (prow // D) + 1, l_i)
