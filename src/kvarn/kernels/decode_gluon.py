"""Gluon record pass of fused decode attention (the default where it applies; ``KVARN_DECODE_GLUON=0``: the Triton
kernel alone; decode_attention.py launches it).

Why Gluon: in the Triton kernel (decode_kernel.py) a tile's code bytes go global -> registers -> shared memory (the
layout change that feeds ldmatrix), and that store waits for the load: 28% of all warp samples on the H200
(Nsight Compute, ``benchmarks/gpu/results/h200-verify-2026-12-01p``). Here each tile's record is copied global ->
shared memory by ``cp.async`` one tile ahead into a two-stage buffer, with no registers held, and ldmatrix feeds the
MMAs from there. The tile math is the Triton kernel's transposed form (decode_record.py), per token plane p and
channel plane c:

    s[n, i]  = kc[n] * qa[i] * ( sum_d codes_K[n, d] (q_un[d, i] ks[d]) + sum_d q_un kz - 1024 sum_d q_un ks )
    o[i, 4e + c] += vc[4e + c] * ( sum_n codes_V[e, n] (p[n, i] vs[n]) + sum_n p vz - 1024 sum_n p vs )

(codes enter the MMAs as fp16 1024 + code, as ``decode_record._codes_f16``). The spike of this kernel
(``benchmarks/gpu/gluon_records.py`` at commit 978c5d6, all-record caches) ran 1.43-1.50x faster than the Triton
kernel on the H200 (256 x 8,192: 868.2 -> 597.4 us per layer call, 71% of the copy rate).

Scope: kvarn_k4v2_g128 records, head_dim 128, 4 query heads per KV head, one token per request (no grouped rows).
Program (b*Hk + h, split s) walks the record tiles of split s (the same ranges as the Triton kernel's split-K:
ceil(n/S) of the request's own n tiles, a pool tile at either end left out); pool tiles in the middle (blocks not
flushed yet) are masked, and with the token sink (``KVARN_SINK=token``) position 0 of a record whose map entry is
<= -2 is masked too. The fp16 pool tiles and the token sink's row go to P more partials (slots S..S+P-1): by pool
programs in this launch (decode_gluon_pool.py, the default: started after the record splits, every program rotating
q itself) or by the Triton kernel's pool pass launched before this one (``NOREC``, which then also stores the
rotated q rows; decode_attention.GLUON_POOL_FUSED off); the last program of each (request, KV head) merges them
(decode_gluon_merge.py, MERGE; else the split-K combine launch). Inputs: q [B, Hq, D] in the
model's frame (QROT) or rotated fp32 rows. Outputs: part [B, Hq, >= S+P, D] fp32 (unnormalized, rotated frame) and
ml [B, Hq, >= S+P, 2] (max, sum).

Measured (H200, 2026-12-01, ``benchmarks/gpu/results/h200-gluon-2026-12-01q``), us per layer call through the
launcher, Triton kernel -> this path: 256 x 8,192 896.2 -> 704.2 (67.5% of the copy rate), 128 x 8,192 464.6 ->
361.3, 32 x 8,192 133.0 -> 108.3, 768 x 2,048 741.3 -> 645.9. With the V fields in place and the leaner pool pass
(``h200-lop3-2026-12-01r``, benchmark (a)): 256 x 8,192 675.7 (70%), 128 x 8,192 353.7 (67%), 32 x 8,192 106.7 (56%).
With the pool programs and the q rotation in this launch and the one-load combine (``h200-poolfuse-2026-12-01s``,
benchmark (a)): 256 x 8,192 661.8 (72%), 128 x 8,192 340.2 (70%), 32 x 8,192 100.6 (59%). With the merge in this
launch and the Gluon path's own split rule (``h200-merge-2026-12-01t``, call 4): 256 x 8,192 652.0 (73%),
128 x 8,192 326.7 (73%), 32 x 8,192 94.8 (63%).
"""
from __future__ import annotations

import math

import torch
import triton

from kvarn.kernels._common import DECODE_GLUON, GLUON, GLUON_TRITON_VERSIONS, INTERPRET, check, layout_constexprs

if GLUON:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
    from triton.experimental.gluon.language.nvidia.ampere import mma_v2

    from kvarn.kernels.decode_gluon_merge import _merge_if_last
    from kvarn.kernels.decode_gluon_pool import _pool_program, _q_rows

# V code fields unpacked in place (``_spread`` + ``_field``: 1024 + 4^c code, the MMA sums rescaled by 4^-c) instead
# of shifted down first (``_codes``): 1,323 -> 1,280 instructions per tile and warp (offline sm_90 SASS), 1-3% faster
# per Gluon launch on the H200 (results/h200-lop3-2026-12-01r). A module constant so probes can A/B it
# (probe_gluon_parts.py, variant l0/l1).
GLUON_V_FIELDS = True
# Fused path (decode_attention.GLUON_POOL_FUSED): the pool programs start after the record splits (True) or before.
# After: they fill the slots the last record wave frees instead of taking slots the first needs; H200, CUDA-graph us
# per layer call, before -> after (results/h200-poolfuse-2026-12-01s, call 4): 32 x 8,192 103.9 -> 100.3 / 99.7,
# 128 x 8,192 354.5 -> 325.7 / 327.4, 256 x 8,192 681.6 -> 641.0 / 661.7, 8 x 32,768 127.7 -> 102.3 / 102.2.
GLUON_POOL_LAST = True

# the record regions this kernel assumes (kvarn.config.KvarnConfig.offsets of kvarn_k4v2_g128 at head_dim 128)
GLUON_LAYOUT = {"D": 128, "G": 128, "KB": 4, "VB": 2, "R": 13824, "K_CODES": 0, "K_RS": 8192, "K_RZ": 8448,
                "K_CS": 8704, "V_CODES": 8960, "V_CS": 13056, "V_RS": 13312, "V_RZ": 13568}

if GLUON:

    @gluon.jit
    def _codes(x, SH: gl.constexpr, MASK: gl.constexpr):
        """uint8 x -> fp16 1024 + ((x >> SH) & MASK): per four bytes one shift, one AND and two PRMTs."""
        return gl.inline_asm_elementwise(
            "{ .reg .b32 t; shr.b32 t, $2, " + SH.__str__() + "; and.b32 t, t, " + (MASK * 0x01010101).__str__()
            + "; prmt.b32 $0, t, 0x64646464, 0x4140; prmt.b32 $1, t, 0x64646464, 0x4342; }",
            "=r,=r,r", [x], dtype=gl.float16, is_pure=True, pack=4)

    @gluon.jit
    def _spread(x):
        """uint8 x -> fp16 with bit pattern 0x64xx (= 1024 + x): per four bytes two PRMTs, shared by every code
        field of the byte (``_field`` keeps one)."""
        return gl.inline_asm_elementwise(
            "prmt.b32 $0, $2, 0x64646464, 0x4140; prmt.b32 $1, $2, 0x64646464, 0x4342;",
            "=r,=r,r", [x], dtype=gl.float16, is_pure=True, pack=4)

    @gluon.jit
    def _field(p, MASK: gl.constexpr):
        """fp16 0x64xx (``_spread``) -> 1024 + (xx & MASK), the code field in place (times 2^shift): one AND per
        two values. The MMA's sums are rescaled by 2^-shift in fp32 (exact) afterwards."""
        return gl.inline_asm_elementwise(
            "and.b32 $0, $1, " + (0xFF00FF00 | (MASK * 0x00010001)).__str__() + ";",
            "=r,r", [p], dtype=gl.float16, is_pure=True, pack=2)

    @gluon.jit
    def _issue(rec, kbuf, vbuf, hbuf, st, koff, voff, hoff):
        """cp.async of one record (rec: its first byte) into stage st: K codes [64, 128] and V codes [32, 128]
        (uint8), the fp16 vectors ks, kz, kc and vc, vs, vz as hbuf rows 0-5; one commit group."""
        cp.async_copy_global_to_shared(kbuf.index(st), rec + koff)
        cp.async_copy_global_to_shared(vbuf.index(st), rec + voff)
        cp.async_copy_global_to_shared(hbuf.index(st), rec.to(gl.pointer_type(gl.float16)) + hoff)
        cp.commit_group()

    @gluon.jit
    def _gluon_record_kernel(qs_ptr, kv_ptr, b2s_ptr, bt_ptr, sl_ptr, part_ptr, ml_ptr, pk_ptr, pv_ptr,
                             stride_kvb, stride_btb, stride_pb, stride_ph, stride_ps,
                             stride_pks, stride_pkn, stride_pkh, pool_k_scale, pool_v_scale,
                             stride_qb, stride_qh, q_mult,
                             HK: gl.constexpr, NW: gl.constexpr, TS: gl.constexpr,
                             R: gl.constexpr, K_RS: gl.constexpr, V_CODES: gl.constexpr, V_CS: gl.constexpr,
                             LOP: gl.constexpr = True, P: gl.constexpr = 0, PBN: gl.constexpr = 32,
                             PDT: gl.constexpr = gl.float16, PLAST: gl.constexpr = False,
                             QROT: gl.constexpr = False, cnt_ptr=None, o_ptr=None, stride_ob=0, stride_oh=0,
                             o_mult=1.0, MERGE: gl.constexpr = False):
        """q rows [B, Hk*4, 128] (QROT: the model's frame, rotated by each program; else fp32, rotated and * scale *
        log2 e) -> split partials. Program (b*Hk + h, j): P > 0 (the
        fused path): j < P pool program j into slot S + j (decode_gluon_pool._pool_program), else record split
        j - P of S = num_programs(1) - P into slot j - P (PLAST: record splits first, j >= S pool program j - S; the
        GPU starts programs in order of j); P = 0: record split j of num_programs(1). MERGE: the last program of
        (b, hk) to finish merges the partials into o (decode_gluon_merge._merge_if_last; counters cnt_ptr)."""
        pid = gl.program_id(0)
        sid = gl.program_id(1)
        b = pid // HK
        hk = pid % HK
        if P > 0:
            nrec = gl.num_programs(1) - P
            u = sid - nrec if PLAST else sid  # this program's pool share (< 0 or >= P: a record split)
            rs = sid if PLAST else sid - P  # its record split
            if (u >= 0) & (u < P):
                _pool_program(qs_ptr, pk_ptr, pv_ptr, b2s_ptr, bt_ptr, sl_ptr, part_ptr, ml_ptr, b, hk, u,
                              nrec + u, stride_pks, stride_pkn, stride_pkh, stride_btb, stride_pb, stride_ph,
                              stride_ps, pool_k_scale, pool_v_scale, stride_qb, stride_qh, q_mult, HK, NW, TS, P,
                              PBN, PDT, QROT)
            else:
                _record_program(qs_ptr, kv_ptr, b2s_ptr, bt_ptr, sl_ptr, part_ptr, ml_ptr, b, hk, rs, nrec,
                                stride_kvb, stride_btb, stride_pb, stride_ph, stride_ps, stride_qb, stride_qh, q_mult,
                                HK, NW, TS, R, K_RS, V_CODES, V_CS, LOP, QROT)
        else:
            _record_program(qs_ptr, kv_ptr, b2s_ptr, bt_ptr, sl_ptr, part_ptr, ml_ptr, b, hk, sid,
                            gl.num_programs(1), stride_kvb, stride_btb, stride_pb, stride_ph, stride_ps, stride_qb,
                            stride_qh, q_mult, HK, NW, TS, R, K_RS, V_CODES, V_CS, LOP, QROT)
        if MERGE:
            _merge_if_last(cnt_ptr, part_ptr, ml_ptr, o_ptr, b, hk, pid, gl.num_programs(1), stride_pb, stride_ph,
                           stride_ob, stride_oh, o_mult, NW)

    @gluon.jit
    def _record_program(qs_ptr, kv_ptr, b2s_ptr, bt_ptr, sl_ptr, part_ptr, ml_ptr, b, hk, sid, nsplit,
                        stride_kvb, stride_btb, stride_pb, stride_ph, stride_ps, stride_qb, stride_qh, q_mult,
                        HK: gl.constexpr, NW: gl.constexpr, TS: gl.constexpr,
                        R: gl.constexpr, K_RS: gl.constexpr, V_CODES: gl.constexpr, V_CS: gl.constexpr,
                        LOP: gl.constexpr, QROT: gl.constexpr):
        """Record split sid of nsplit of (request b, KV head hk) into split partial sid (module doc)."""
        QPK: gl.constexpr = 4
        D: gl.constexpr = 128
        G: gl.constexpr = 128
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[NW, 1], instr_shape=[16, 8])
        opa: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=4)
        opb: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=4)
        rows: gl.constexpr = gl.SliceLayout(1, mma)  # per token (scores) / per channel (accumulators)
        cols: gl.constexpr = gl.SliceLayout(0, mma)  # per query row
        kcl: gl.constexpr = gl.BlockedLayout([1, 16], [4, 8], [NW, 1], [1, 0])  # [64, 128] u8 copies
        vcl: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [NW, 1], [1, 0])  # [32, 128] u8 copies
        hcl: gl.constexpr = gl.BlockedLayout([1, 2], [2, 16], [NW, 1], [1, 0])  # [8, 128] fp16 copies (4 B)
        qbl: gl.constexpr = gl.BlockedLayout([1, QPK], [32, 1], [NW, 1], [1, 0])  # q^T [128, 4]
        csh: gl.constexpr = gl.SwizzledSharedLayout(vec=16, per_phase=1, max_phase=8, order=[1, 0])
        hsh: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0])
        flat: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[0])
        # the query rows first (QROT: rotated here), before the copy offsets below are live (after them the QROT
        # kernel took 215 registers, offline sm_90 SASS: 4 programs per SM instead of 6)
        qt = _q_rows(qs_ptr, b, hk, stride_qb, stride_qh, q_mult, QROT, NW)  # [D, 4] fp32, rotated and scaled
        qa = gl.max(gl.abs(qt), 0) + 1e-30
        q_un = qt * (1.0 / qa)[None, :]
        qa_c = gl.convert_layout(qa, cols)
        # two stages, one tile in flight (three, 44 KB and 5 programs per SM instead of 6: 7-20% slower, H200)
        kbuf = gl.allocate_shared_memory(gl.uint8, [2, 64, 128], csh)
        vbuf = gl.allocate_shared_memory(gl.uint8, [2, 32, 128], csh)
        hbuf = gl.allocate_shared_memory(gl.float16, [2, 8, 128], hsh)

        kr = gl.arange(0, 64, layout=gl.SliceLayout(1, kcl))
        kcc = gl.arange(0, 128, layout=gl.SliceLayout(0, kcl))
        koff = kr[:, None] * D + kcc[None, :]  # K codes start the record
        vr = gl.arange(0, 32, layout=gl.SliceLayout(1, vcl))
        vcc = gl.arange(0, 128, layout=gl.SliceLayout(0, vcl))
        voff = V_CODES + vr[:, None] * G + vcc[None, :]
        hr = gl.minimum(gl.arange(0, 8, layout=gl.SliceLayout(1, hcl)), 5)  # rows 6, 7 repeat row 5
        hc = gl.arange(0, 128, layout=gl.SliceLayout(0, hcl))
        hoff = gl.where(hr < 3, K_RS // 2 + hr * 128, V_CS // 2 + (hr - 3) * 128)[:, None] + hc[None, :]

        seq_len = gl.load(sl_ptr + b)
        n_tiles = gl.cdiv(seq_len, G)
        tps = gl.cdiv(n_tiles, nsplit)
        t0 = sid * tps
        t1 = gl.minimum(t0 + tps, n_tiles)
        bt_row = bt_ptr + b * stride_btb
        # block ids of tiles t0, t0 + 1, t0 + 2 and t1 - 1 in one round trip (clamped to the request's tiles; a
        # clamped id is never used), so the first record's copy waits on two dependent loads after seq_len, not three
        last = gl.maximum(n_tiles - 1, 0)
        bt0 = gl.load(bt_row + gl.minimum(t0, last))
        bt1 = gl.load(bt_row + gl.minimum(t0 + 1, last))
        bt2 = gl.load(bt_row + gl.minimum(t0 + 2, last))
        # a pool tile at either end of the range (the fp16 sink, the filling tail) is not walked here
        e_lo = gl.load(b2s_ptr + bt0.to(gl.int64))
        e_hi = gl.load(b2s_ptr + gl.load(bt_row + gl.maximum(t1 - 1, 0)).to(gl.int64))
        r0 = t0 + ((e_lo >= 0) & (t0 < t1)).to(gl.int32)
        r1 = t1 - ((e_hi >= 0) & (t1 - 1 >= r0)).to(gl.int32)

        # an empty range (split past the end, CUDA-graph padding) copies block 0's record, never used
        live_r = r0 < r1
        blk = gl.where(live_r, gl.where(r0 == t0, bt0, bt1), 0).to(gl.int64)  # tile r0's (r0 is t0 or t0 + 1)
        ent = gl.load(b2s_ptr + blk)
        rec0 = kv_ptr + blk * stride_kvb + hk * R
        _issue(rec0, kbuf, vbuf, hbuf, 0, koff, voff, hoff)
        # tile t + 1's block, map entry and record (the last tile repeats: same group count, never used)
        blk1 = gl.where(live_r & (r0 + 1 < r1), gl.where(r0 == t0, bt1, bt2).to(gl.int64), blk)
        ent1 = gl.load(b2s_ptr + blk1)
        rec1 = kv_ptr + blk1 * stride_kvb + hk * R
        e4 = gl.arange(0, 32, layout=rows) * 4
        vcp = (rec0 + V_CS).to(gl.pointer_type(gl.float16)) + e4  # vc[4e + c]: strided, through registers
        vn0 = gl.load(vcp)
        vn1 = gl.load(vcp + 1)
        vn2 = gl.load(vcp + 2)
        vn3 = gl.load(vcp + 3)
        j = gl.arange(0, 64, layout=rows)

        m_i = gl.full([QPK], -1e30, gl.float32, layout=cols)
        l_i = gl.zeros([QPK], gl.float32, layout=cols)
        zs = gl.zeros([64, QPK], gl.float32, layout=mma)
        zv = gl.zeros([32, QPK], gl.float32, layout=mma)
        a0 = zv
        a1 = zv
        a2 = zv
        a3 = zv
        for t in range(r0, r1):
            st = (t - r0) % 2
            # tile t + 1's record into the other stage (the last tile re-copies itself: same group count)
            _issue(rec1, kbuf, vbuf, hbuf, 1 - st, koff, voff, hoff)
            cp.wait_group(1)
            gl.thread_barrier()
            # tokens that count: a record's (a pool tile in the middle of the range: none), position 0 of a
            # record whose row 0 is a sink row left to the pool pass (TS), and only complete positions
            n_valid = gl.where(ent < 0, seq_len - t * G, 0)
            nlo = 0
            if TS:
                nlo = (ent <= -2).to(gl.int32)
            ok0 = (j < n_valid) & (j >= nlo)
            ok1 = (j + 64) < n_valid
            hv = hbuf.index(st)._reinterpret(gl.float16, [1024], flat)  # the six vectors, 128 each
            ks = hv.slice(0, 128).load(gl.SliceLayout(1, qbl)).to(gl.float32)
            kz = hv.slice(128, 128).load(gl.SliceLayout(1, qbl)).to(gl.float32)
            qk = (q_un * ks[:, None]).to(gl.float16)
            qk_op = gl.convert_layout(qk, opb)
            kb = kbuf.index(st).load(opa)  # [64, 128]: token j of plane p in nibble p
            kc0 = hv.slice(256, 64).load(rows).to(gl.float32)
            kc1 = hv.slice(320, 64).load(rows).to(gl.float32)
            qz = gl.convert_layout(gl.sum(q_un * kz[:, None] - 1024.0 * qk.to(gl.float32), 0), cols)
            s0 = mma_v2(_codes(kb, 0, 15), qk_op, zs)
            s1 = mma_v2(_codes(kb, 4, 15), qk_op, zs)
            s0 = gl.where(ok0[:, None], (s0 + qz[None, :]) * qa_c[None, :] * kc0[:, None], -1e30)
            s1 = gl.where(ok1[:, None], (s1 + qz[None, :]) * qa_c[None, :] * kc1[:, None], -1e30)
            m_new = gl.maximum(m_i, gl.max(gl.maximum(s0, s1), 0))
            alpha = gl.exp2(m_i - m_new)
            p0 = gl.where(ok0[:, None], gl.exp2(s0 - m_new[None, :]), 0.0)
            p1 = gl.where(ok1[:, None], gl.exp2(s1 - m_new[None, :]), 0.0)
            vs0 = hv.slice(512, 64).load(rows).to(gl.float32)
            vs1 = hv.slice(576, 64).load(rows).to(gl.float32)
            vz0 = hv.slice(640, 64).load(rows).to(gl.float32)
            vz1 = hv.slice(704, 64).load(rows).to(gl.float32)
            # masked tokens give 0 whatever a pool tile's page holds (its bytes are not a record)
            pv0 = gl.where(ok0[:, None], p0 * vs0[:, None], 0.0).to(gl.float16)
            pv1 = gl.where(ok1[:, None], p1 * vs1[:, None], 0.0).to(gl.float16)
            ps = gl.sum(p0 + p1, 0)
            b0 = gl.convert_layout(pv0, opb)
            b1 = gl.convert_layout(pv1, opb)
            vb0 = vbuf.index(st).slice(0, 64, dim=1).load(opa)  # [32, 64]: channel 4e + c in bits 2c
            vb1 = vbuf.index(st).slice(64, 64, dim=1).load(opa)
            live = ent < 0
            if LOP:  # plane c enters as 1024 + 4^c code: (t_c + 4^c sum p vz - 1024 sum pv) * vc / 4^c
                pz = gl.sum(gl.where(ok0[:, None], p0 * vz0[:, None], 0.0)
                            + gl.where(ok1[:, None], p1 * vz1[:, None], 0.0), 0)[None, :]
                spv = gl.sum(pv0.to(gl.float32) + pv1.to(gl.float32), 0)[None, :]
                vp0 = _spread(vb0)
                vp1 = _spread(vb1)
                t0v = mma_v2(_field(vp1, 3), b1, mma_v2(_field(vp0, 3), b0, zv)) + (pz - 1024.0 * spv)
                t1v = mma_v2(_field(vp1, 12), b1, mma_v2(_field(vp0, 12), b0, zv)) + (4.0 * pz - 1024.0 * spv)
                t2v = mma_v2(_field(vp1, 48), b1, mma_v2(_field(vp0, 48), b0, zv)) + (16.0 * pz - 1024.0 * spv)
                t3v = mma_v2(_field(vp1, 192), b1, mma_v2(_field(vp0, 192), b0, zv)) + (64.0 * pz - 1024.0 * spv)
            else:
                z0 = gl.where(ok0[:, None], p0 * vz0[:, None], 0.0) - 1024.0 * pv0.to(gl.float32)
                z1 = gl.where(ok1[:, None], p1 * vz1[:, None], 0.0) - 1024.0 * pv1.to(gl.float32)
                pzc = gl.sum(z0 + z1, 0)[None, :]
                t0v = mma_v2(_codes(vb1, 0, 3), b1, mma_v2(_codes(vb0, 0, 3), b0, zv)) + pzc
                t1v = mma_v2(_codes(vb1, 2, 3), b1, mma_v2(_codes(vb0, 2, 3), b0, zv)) + pzc
                t2v = mma_v2(_codes(vb1, 4, 3), b1, mma_v2(_codes(vb0, 4, 3), b0, zv)) + pzc
                t3v = mma_v2(_codes(vb1, 6, 3), b1, mma_v2(_codes(vb0, 6, 3), b0, zv)) + pzc
            F: gl.constexpr = 0.25 if LOP else 1.0  # LOP: plane c's sums carry 4^c, divided out with its vc
            vc0 = gl.where(live, vn0.to(gl.float32), 0.0)  # this tile's vc, loaded a tile ago
            vc1 = gl.where(live, vn1.to(gl.float32) * F, 0.0)
            vc2 = gl.where(live, vn2.to(gl.float32) * (F * F), 0.0)
            vc3 = gl.where(live, vn3.to(gl.float32) * (F * F * F), 0.0)
            vcp = (rec1 + V_CS).to(gl.pointer_type(gl.float16)) + e4  # tile t + 1's vc
            vn0 = gl.load(vcp)
            vn1 = gl.load(vcp + 1)
            vn2 = gl.load(vcp + 2)
            vn3 = gl.load(vcp + 3)
            a0 = a0 * alpha[None, :] + t0v * vc0[:, None]
            a1 = a1 * alpha[None, :] + t1v * vc1[:, None]
            a2 = a2 * alpha[None, :] + t2v * vc2[:, None]
            a3 = a3 * alpha[None, :] + t3v * vc3[:, None]
            m_i = m_new
            l_i = l_i * alpha + ps
            ent = ent1
            nb = gl.load(bt_row + gl.minimum(t + 2, r1 - 1)).to(gl.int64)  # tile t + 2's, for the next copy
            ent1 = gl.load(b2s_ptr + nb)
            rec1 = kv_ptr + nb * stride_kvb + hk * R
            gl.thread_barrier()  # every warp is done with this stage before it is refilled
        cp.wait_group(0)
        e = gl.arange(0, 32, layout=rows)
        r = gl.arange(0, QPK, layout=cols)
        prow = b * stride_pb + (hk * QPK + r) * stride_ph + sid * stride_ps  # [4]
        pb = part_ptr + prow[None, :] + 4 * e[:, None]
        gl.store(pb, a0)
        gl.store(pb + 1, a1)
        gl.store(pb + 2, a2)
        gl.store(pb + 3, a3)
        gl.store(ml_ptr + 2 * (prow // D), m_i)
        gl.store(ml_ptr + 2 * (prow // D) + 1, l_i)


def gluon_applies(cfg, q_heads_per_kv: int, tokens_per_program: int, all_pool: bool, device) -> bool:
    """Whether the Gluon record pass can serve a launch: Gluon importable, a CUDA device (not Triton's
    interpreter), records laid out as GLUON_LAYOUT (kvarn_k4v2_g128 at head_dim 128, either sink), 4 query heads
    per KV head, one token per request, and records at all (not the bf16/fp8 all-pool baselines)."""
    if not GLUON or INTERPRET or device.type != "cuda" or all_pool or tokens_per_program != 1 or q_heads_per_kv != 4:
        return False
    return gluon_layout_matches(cfg)


def gluon_layout_matches(cfg) -> bool:
    """Whether cfg's records are laid out as GLUON_LAYOUT (kvarn_k4v2_g128 at head_dim 128, either sink)."""
    lay = layout_constexprs(cfg)
    return all(lay.get(k) == v for k, v in GLUON_LAYOUT.items())


def decode_path_note(cfg, q_heads_per_kv: int) -> str:
    """One line for the CUDA startup log: which kernel reads the records in single-token decode, and why."""
    if not DECODE_GLUON:
        return "decode records read by the Triton kernel (KVARN_DECODE_GLUON=0)"
    if gluon_applies(cfg, q_heads_per_kv, 1, False, torch.device("cuda")):
        return f"decode records read by the Gluon kernel (cp.async staging; Triton {triton.__version__})"
    if not GLUON or INTERPRET:
        want = " / ".join(v + "x" for v in GLUON_TRITON_VERSIONS)
        why = f"the Gluon kernel needs Triton {want}, found {triton.__version__}"
    else:
        why = (f"the Gluon kernel serves kvarn_k4v2_g128 at head_dim 128 with 4 query heads per KV head, not "
               f"{cfg.kv_cache_dtype} at head_dim {cfg.head_dim} with {q_heads_per_kv}")
    return f"decode records read by the Triton kernel ({why})"


def gluon_record_partials(qs, kv_cache, block_to_slot, block_table, seq_lens, part, ml, num_splits: int,
                          token_sink: bool, pool_k, pool_v, pool_splits: int = 0, pool_scale=(1.0, 1.0),
                          pool_block_n: int = 32, q_mult: float | None = None, out: torch.Tensor | None = None,
                          counters: torch.Tensor | None = None) -> None:
    """Record pass into split slots 0..S-1 and, ``pool_splits`` P > 0 (the fused path), the pool tiles and the token
    sink's row into slots S..S+P-1 in the same launch: qs [B, 4*Hk, 128] with contiguous channels: q_mult None: fp32,
    rotated and * scale * log2 e; else q in the model's frame (fp16/bf16/fp32), rotated in every program (fast
    Walsh-Hadamard transform, decode_gluon_pool._q_rows) and times q_mult. kv_cache uint8 [NB, Hk, 13824]; pool_k /
    pool_v fp16/bf16 [slots, G, Hk, 128] (rows contiguous); part fp32 [B, Hq, >= S+P, 128] and ml fp32 [B, Hq,
    >= S+P, 2], both contiguous. out [B, 4*Hk, 128] (fp16/bf16/fp32, channels contiguous): the last program of each
    (request, KV head) merges the partials into it, rotated back (decode_gluon_merge; no combine launch needed);
    counters int32 [>= B*Hk], zero, are its arrival counters (left zero again)."""
    bsz, hq, d = qs.shape
    hk = kv_cache.shape[1]
    check(qs.dim() == 3 and qs.stride(2) == 1 and d == 128 and hq == 4 * hk
          and (qs.dtype == torch.float32 if q_mult is None else qs.dtype in (torch.float16, torch.bfloat16,
                                                                               torch.float32)),
          f"qs must be [B, 4*Hk, 128] with contiguous channels, fp32 (or fp16/bf16/fp32 with q_mult), got {qs.dtype} "
          f"{tuple(qs.shape)} strides {qs.stride()} (Hk {hk})")
    check(kv_cache.dtype == torch.uint8 and kv_cache.shape[2] == GLUON_LAYOUT["R"] and kv_cache.stride(1) ==
          GLUON_LAYOUT["R"] and kv_cache.stride(2) == 1, f"kv_cache must be uint8 [NB, Hk, {GLUON_LAYOUT['R']}] "
          f"with contiguous heads, got {kv_cache.dtype} {tuple(kv_cache.shape)} strides {kv_cache.stride()}")
    check(part.is_contiguous() and ml.is_contiguous() and part.shape[:2] == (bsz, hq)
          and part.shape[2] >= num_splits + pool_splits
          and ml.shape == (*part.shape[:3], 2), f"part [B, Hq, >= S+P, D] / ml [B, Hq, >= S+P, 2] contiguous fp32, "
          f"got {tuple(part.shape)} / {tuple(ml.shape)} for S = {num_splits}, P = {pool_splits}")
    check(pool_k.dtype in (torch.float16, torch.bfloat16) and pool_v.dtype == pool_k.dtype
          and pool_k.shape == pool_v.shape and pool_k.stride() == pool_v.stride() and pool_k.shape[2:] == (hk, 128)
          and pool_k.stride(3) == 1, f"pool_k / pool_v must be fp16/bf16 [slots, G, {hk}, 128] with the same strides, "
          f"got {pool_k.dtype} {tuple(pool_k.shape)} / {pool_v.dtype} {tuple(pool_v.shape)}")
    check(pool_block_n in (32, 64), f"pool_block_n must be 32 or 64, got {pool_block_n}")
    merge = out is not None
    if merge:
        check(out.shape == qs.shape and out.stride(2) == 1 and out.dtype in (torch.float16, torch.bfloat16,
                                                                               torch.float32),
              f"out must be fp16/bf16/fp32 {tuple(qs.shape)} with contiguous channels, got {out.dtype} "
              f"{tuple(out.shape)} strides {out.stride()}")
        check(counters is not None and counters.dtype == torch.int32 and counters.dim() == 1
              and counters.numel() >= bsz * hk and counters.device == part.device,
              f"counters must be int32 [>= B*Hk = {bsz * hk}] on {part.device} (zero) when out is given, got "
              f"{None if counters is None else (counters.dtype, tuple(counters.shape), counters.device)}")
    lay = GLUON_LAYOUT
    _gluon_record_kernel[(bsz * hk, num_splits + pool_splits)](
        qs, kv_cache, block_to_slot, block_table, seq_lens, part, ml, pool_k, pool_v, kv_cache.stride(0),
        block_table.stride(0), part.stride(0), part.stride(1), part.stride(2), pool_k.stride(0), pool_k.stride(1),
        pool_k.stride(2), float(pool_scale[0]), float(pool_scale[1]), qs.stride(0), qs.stride(1),
        1.0 if q_mult is None else float(q_mult), HK=hk, NW=2, TS=bool(token_sink), R=lay["R"],
        K_RS=lay["K_RS"], V_CODES=lay["V_CODES"], V_CS=lay["V_CS"], LOP=GLUON_V_FIELDS, P=pool_splits,
        PBN=pool_block_n, PDT=gl.bfloat16 if pool_k.dtype == torch.bfloat16 else gl.float16,
        PLAST=GLUON_POOL_LAST, QROT=q_mult is not None, cnt_ptr=counters if merge else None,
        o_ptr=out if merge else None, stride_ob=out.stride(0) if merge else 0,
        stride_oh=out.stride(1) if merge else 0, o_mult=1.0 / math.sqrt(d), MERGE=merge, num_warps=2)
