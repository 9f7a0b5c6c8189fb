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
<= -2 is masked too. The launcher runs the Triton kernel's pool pass first (``NOREC``: the fp16 pool tiles and the
sink row into partial slots S.., and the rotated, scaled q rows this kernel reads), then this kernel, then the
split-K combine. Inputs: qs [B, Hq, D] fp32. Outputs: part [B, Hq, > S, D] fp32 (unnormalized, rotated frame) and
ml [B, Hq, > S, 2] (max, sum) at slots 0..S-1.

Measured (H200, 2026-12-01, ``benchmarks/gpu/results/h200-gluon-2026-12-01q``), us per layer call through the
launcher, Triton kernel -> this path: 256 x 8,192 896.2 -> 704.2 (67.5% of the copy rate), 128 x 8,192 464.6 ->
361.3, 32 x 8,192 133.0 -> 108.3, 768 x 2,048 741.3 -> 645.9. With the V fields in place and the leaner pool pass
(``h200-lop3-2026-12-01r``, benchmark (a)): 256 x 8,192 675.7 (70%), 128 x 8,192 353.7 (67%), 32 x 8,192 106.7 (56%).
"""
from __future__ import annotations

import torch
import triton

from kvarn.kernels._common import DECODE_GLUON, INTERPRET, check, layout_constexprs

# Gluon's API is experimental and moves between Triton releases (3.9 replaced async_copy_global_to_shared by
# async_load): this kernel is written for, and compiled and timed with, Triton 3.6 (torch 2.11, vLLM 0.26's CUDA
# stack). Other versions run the Triton kernel alone.
GLUON_TRITON_VERSIONS = ("3.6.",)
GLUON = False
if triton.__version__.startswith(GLUON_TRITON_VERSIONS):
    try:
        from triton.experimental import gluon
        from triton.experimental.gluon import language as gl
        from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
        from triton.experimental.gluon.language.nvidia.ampere import mma_v2
        GLUON = True
    except ImportError:
        GLUON = False

# V code fields unpacked in place (``_spread`` + ``_field``: 1024 + 4^c code, the MMA sums rescaled by 4^-c) instead
# of shifted down first (``_codes``): 1,323 -> 1,280 instructions per tile and warp (offline sm_90 SASS), 1-3% faster
# per Gluon launch on the H200 (results/h200-lop3-2026-12-01r). A module constant so probes can A/B it
# (probe_gluon_parts.py, variant l0/l1).
GLUON_V_FIELDS = True

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
    def _gluon_record_kernel(qs_ptr, kv_ptr, b2s_ptr, bt_ptr, sl_ptr, part_ptr, ml_ptr,
                             stride_kvb, stride_btb, stride_pb, stride_ph, stride_ps,
                             HK: gl.constexpr, NW: gl.constexpr, TS: gl.constexpr,
                             R: gl.constexpr, K_RS: gl.constexpr, V_CODES: gl.constexpr, V_CS: gl.constexpr,
                             LOP: gl.constexpr = True):
        """qs [B, Hk*4, 128] fp32 (rotated, * scale * log2 e) -> partials of split program_id(1) (module doc)."""
        QPK: gl.constexpr = 4
        D: gl.constexpr = 128
        G: gl.constexpr = 128
        pid = gl.program_id(0)
        sid = gl.program_id(1)
        b = pid // HK
        hk = pid % HK
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
        tps = gl.cdiv(n_tiles, gl.num_programs(1))
        t0 = sid * tps
        t1 = gl.minimum(t0 + tps, n_tiles)
        bt_row = bt_ptr + b * stride_btb
        # a pool tile at either end of the range (the fp16 sink, the filling tail) is not walked here
        e_lo = gl.load(b2s_ptr + gl.load(bt_row + gl.maximum(gl.minimum(t0, t1 - 1), 0)).to(gl.int64))
        e_hi = gl.load(b2s_ptr + gl.load(bt_row + gl.maximum(t1 - 1, 0)).to(gl.int64))
        r0 = t0 + ((e_lo >= 0) & (t0 < t1)).to(gl.int32)
        r1 = t1 - ((e_hi >= 0) & (t1 - 1 >= r0)).to(gl.int32)

        qd = gl.arange(0, D, layout=gl.SliceLayout(1, qbl))
        qn = gl.arange(0, QPK, layout=gl.SliceLayout(0, qbl))
        qt = gl.load(qs_ptr + (b * HK * QPK + hk * QPK + qn[None, :]) * D + qd[:, None])  # [D, 4]
        qa = gl.max(gl.abs(qt), 0) + 1e-30
        q_un = qt * (1.0 / qa)[None, :]
        qa_c = gl.convert_layout(qa, cols)

        # an empty range (split past the end, CUDA-graph padding) copies block 0's record, never used
        live_r = r0 < r1
        blk = gl.where(live_r, gl.load(bt_row + gl.maximum(gl.minimum(r0, r1 - 1), 0)), 0).to(gl.int64)
        ent = gl.load(b2s_ptr + blk)
        rec0 = kv_ptr + blk * stride_kvb + hk * R
        _issue(rec0, kbuf, vbuf, hbuf, 0, koff, voff, hoff)
        # tile t + 1's block, map entry and record (the last tile repeats: same group count, never used)
        blk1 = gl.where(live_r, gl.load(bt_row + gl.maximum(gl.minimum(r0 + 1, r1 - 1), 0)), 0).to(gl.int64)
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
                          token_sink: bool) -> None:
    """Record pass into split slots 0..S-1: qs fp32 [B, 4*Hk, 128] contiguous (rotated, * scale * log2 e);
    kv_cache uint8 [NB, Hk, 13824]; part fp32 [B, Hq, > S, 128] and ml fp32 [B, Hq, > S, 2], both contiguous."""
    bsz, hq, d = qs.shape
    hk = kv_cache.shape[1]
    check(qs.dtype == torch.float32 and qs.is_contiguous() and d == 128 and hq == 4 * hk,
          f"qs must be contiguous fp32 [B, 4*Hk, 128], got {qs.dtype} {tuple(qs.shape)} (Hk {hk})")
    check(kv_cache.dtype == torch.uint8 and kv_cache.shape[2] == GLUON_LAYOUT["R"] and kv_cache.stride(1) ==
          GLUON_LAYOUT["R"] and kv_cache.stride(2) == 1, f"kv_cache must be uint8 [NB, Hk, {GLUON_LAYOUT['R']}] "
          f"with contiguous heads, got {kv_cache.dtype} {tuple(kv_cache.shape)} strides {kv_cache.stride()}")
    check(part.is_contiguous() and ml.is_contiguous() and part.shape[:2] == (bsz, hq) and part.shape[2] > num_splits
          and ml.shape == (*part.shape[:3], 2), f"part [B, Hq, > S, D] / ml [B, Hq, > S, 2] contiguous fp32, got "
          f"{tuple(part.shape)} / {tuple(ml.shape)} for S = {num_splits}")
    lay = GLUON_LAYOUT
    _gluon_record_kernel[(bsz * hk, num_splits)](
        qs, kv_cache, block_to_slot, block_table, seq_lens, part, ml, kv_cache.stride(0), block_table.stride(0),
        part.stride(0), part.stride(1), part.stride(2), HK=hk, NW=2, TS=bool(token_sink), R=lay["R"],
        K_RS=lay["K_RS"], V_CODES=lay["V_CODES"], V_CS=lay["V_CS"], LOP=GLUON_V_FIELDS, num_warps=2)
