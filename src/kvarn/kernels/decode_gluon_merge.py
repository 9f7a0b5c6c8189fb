"""The split-K merge inside the Gluon decode launch (decode_gluon.py): the last program of each (request, KV head)
to finish merges the S + P split partials itself, so a call is one launch instead of two (Gluon, combine).

Every program of (b, h) stores its partial, then (all warps past a CTA barrier) adds 1 to the arrival counter
``cnt[b*Hk + h]`` with acquire-release semantics at GPU scope. The program that sees S + P - 1 before its add is
the last: every other partial of (b, h) is in L2 by then (their release, its acquire), so it reads them (``.cg``,
L2 only) and merges, then sets the counter back to 0 for the next call (so the counters must be zero before the
first call: decode_attention.reserve_arrival_counters, a zeroed buffer kept per device, reserved by the vLLM backend
at startup, before any CUDA-graph capture; two launches sharing it must not run at the same time, which one CUDA
stream guarantees):

    M[i] = max_s m_s[i],  w_s[i] = 2^(m_s[i] - M[i]),  L[i] = sum_s w_s[i] l_s[i]
    o[i, :] = (sum_s w_s[i] part_s[i, :]) S / (L[i] sqrt(D))      (S: the +-1 Sylvester matrix of order 128)

(the combine kernel's log-sum-exp merge and its rotation back, decode_kernel._combine_kernel), online over the
partials in order (running max), eight partials' loads in flight at once; the rotation is the q rotation's fast Walsh-Hadamard transform (decode_gluon_pool._fwht128) (channel
d = 32c + lane: four [32, 4] pieces, five lane-shuffle stages each, two stages between pieces), so the merge adds
no layout conversion and few registers to a kernel that must stay at 168 (6 programs per SM). Offline sm_90 SASS
(benchmarks/gpu/sass_gluon_count.py P=2,PLAST=1,QROT=1 with and without MERGE=1): 168 registers either way, record
loop 1,288 -> 1,297 instructions per tile and warp; the eight partials' loads are issued before the first use.
"""
from __future__ import annotations

from kvarn.kernels._common import GLUON

if GLUON:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    from kvarn.kernels.decode_gluon_pool import _fwht128

    @gluon.jit
    def _merge_if_last(cnt_ptr, part_ptr, ml_ptr, o_ptr, b, hk, pid, nparts, stride_pb, stride_ph,
                       stride_ob, stride_oh, o_mult, NW: gl.constexpr):
        """Count this program's arrival for (request b, KV head hk) = pid; the last of ``nparts`` merges part
        [B, Hq, nparts, 128] fp32 / ml [B, Hq, nparts, 2] (contiguous partial rows) into o [B, Hq, 128] (row
        strides stride_ob, stride_oh; o's dtype) and resets the counter (module doc)."""
        gl.thread_barrier()  # every warp's partial stores come before the release below
        old = gl.atomic_add(cnt_ptr + pid, 1, sem="acq_rel", scope="gpu")
        if old == nparts - 1:
            QPK: gl.constexpr = 4
            U: gl.constexpr = 8  # partials per round trip
            pl: gl.constexpr = gl.BlockedLayout([1, 2], [32, 1], [1, NW], [0, 1])  # [32, 4]: lane = channel
            r = gl.arange(0, 32, layout=gl.SliceLayout(1, pl))
            i = gl.arange(0, QPK, layout=gl.SliceLayout(0, pl))
            base = b * stride_pb + (hk * QPK + i) * stride_ph  # [4]: partial 0 of each query row
            mlb = ml_ptr + 2 * (base // 128)
            m = gl.full([QPK], -1e30, gl.float32, layout=gl.SliceLayout(0, pl))
            lsum = gl.zeros([QPK], gl.float32, layout=gl.SliceLayout(0, pl))
            a0 = gl.zeros([32, QPK], gl.float32, layout=pl)
            a1 = a0
            a2 = a0
            a3 = a0
            for s0 in range(0, nparts, U):  # online: U partials' loads in flight at once, merged in order
                for k in gl.static_range(U):
                    s = s0 + k
                    ok = (i * 0 + s) < nparts
                    ms = gl.load(mlb + 2 * s, mask=ok, other=-1e30, cache_modifier=".cg")
                    ls = gl.load(mlb + 2 * s + 1, mask=ok, other=0.0, cache_modifier=".cg")
                    okp = (r[:, None] * 0 + i[None, :] * 0 + s) < nparts
                    v0 = gl.load(part_ptr + base[None, :] + s * 128 + r[:, None], mask=okp, other=0.0,
                                 cache_modifier=".cg")
                    v1 = gl.load(part_ptr + base[None, :] + s * 128 + 32 + r[:, None], mask=okp, other=0.0,
                                 cache_modifier=".cg")
                    v2 = gl.load(part_ptr + base[None, :] + s * 128 + 64 + r[:, None], mask=okp, other=0.0,
                                 cache_modifier=".cg")
                    v3 = gl.load(part_ptr + base[None, :] + s * 128 + 96 + r[:, None], mask=okp, other=0.0,
                                 cache_modifier=".cg")
                    m_new = gl.maximum(m, ms)
                    wo = gl.exp2(m - m_new)[None, :]
                    wn = gl.where(ok, gl.exp2(ms - m_new), 0.0)
                    lsum = lsum * gl.exp2(m - m_new) + wn * ls
                    a0 = a0 * wo + v0 * wn[None, :]
                    a1 = a1 * wo + v1 * wn[None, :]
                    a2 = a2 * wo + v2 * wn[None, :]
                    a3 = a3 * wo + v3 * wn[None, :]
                    m = m_new
            f = (o_mult / gl.maximum(lsum, 1e-30))[None, :]
            z0, z1, z2, z3 = _fwht128(a0 * f, a1 * f, a2 * f, a3 * f, r)  # channels 32c + lane, as the inputs
            ob = o_ptr + b * stride_ob + ((hk * QPK + i) * stride_oh)[None, :] + r[:, None]
            ty = o_ptr.dtype.element_ty
            gl.store(ob, z0.to(ty))
            gl.store(ob + 32, z1.to(ty))
            gl.store(ob + 64, z2.to(ty))
            gl.store(ob + 96, z3.to(ty))
            gl.store(cnt_ptr + pid, 0)
