"""Write path: rotate incoming K/V by H_D and append the rows to the fp16 pool (vLLM slot mapping).

For token t with vLLM cache slot ``s = slot_mapping[t]`` (= block * G + offset; < 0 = padding,
skipped) and every KV head h:

    pool_k[block_to_slot[s // G], s % G, h, :] = (key[t, h, :] @ H_D).to(pool dtype)

and the same for value -> pool_v. H_D = S / sqrt(D) with S the +-1 Sylvester matrix, so the
product is an exact +-1 sum of the bf16/fp16 inputs accumulated in fp32, times 1/sqrt(D)
(equal to kvarn.reference.rotate up to fp32 rounding: at most 1 ulp of the pool dtype).
A token whose block has no pool slot (block_to_slot == -1) is skipped: the backend must give
every block that still receives tokens a slot.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kvarn.kernels._common import ACT_DTYPES, INTERPRET, POOL_DTYPES, check, dot_bf16_safe, hadamard_signs


@triton.jit
def _rotate_append_kernel(
    k_ptr, v_ptr, sgn_ptr, pk_ptr, pv_ptr, b2s_ptr, smap_ptr, T,
    stride_kt, stride_kh, stride_vt, stride_vh, stride_ps, stride_pn, stride_ph, inv_sqrt_d,
    D: tl.constexpr, G: tl.constexpr, BT: tl.constexpr, DC: tl.constexpr, UPCAST: tl.constexpr,
    DIRECT: tl.constexpr,
):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    t = pid * BT + tl.arange(0, BT)
    tm = t < T
    sm = tl.load(smap_ptr + t, mask=tm, other=-1).to(tl.int64)
    has = tm & (sm >= 0)
    blk = tl.where(has, sm // G, 0)
    off = tl.where(has, sm % G, 0)
    if DIRECT:  # smap holds pool rows (slot * G + offset) already
        slot = tl.where(has, blk, -1)
    else:
        slot = tl.load(b2s_ptr + blk, mask=has, other=-1).to(tl.int64)
    ok = has & (slot >= 0)
    dst = tl.where(ok, slot, 0) * stride_ps + off * stride_pn + h * stride_ph
    d = tl.arange(0, D)
    x = tl.load(k_ptr + t[:, None].to(tl.int64) * stride_kt + h * stride_kh + d[None, :], mask=tm[:, None], other=0.0)
    y = tl.load(v_ptr + t[:, None].to(tl.int64) * stride_vt + h * stride_vh + d[None, :], mask=tm[:, None], other=0.0)
    for c in tl.static_range(D // DC):
        e = c * DC + tl.arange(0, DC)
        sg = tl.load(sgn_ptr + d[:, None] * D + e[None, :])
        zero = tl.zeros([BT, DC], tl.float32)
        rk = dot_bf16_safe(x, sg, zero, UPCAST) * inv_sqrt_d
        rv = dot_bf16_safe(y, sg, zero, UPCAST) * inv_sqrt_d
        tl.store(pk_ptr + dst[:, None] + e[None, :], rk.to(pk_ptr.dtype.element_ty), mask=ok[:, None])
        tl.store(pv_ptr + dst[:, None] + e[None, :], rv.to(pv_ptr.dtype.element_ty), mask=ok[:, None])


def rotate_append(key: torch.Tensor, value: torch.Tensor, pool_k: torch.Tensor, pool_v: torch.Tensor,
                  block_to_slot: torch.Tensor | None, slot_mapping: torch.Tensor, group: int) -> None:
    """Rotate key/value [T, Hk, D] (fp16/bf16, original frame) and write them into pool_k/pool_v
    [slots, G, Hk, D] (fp16/bf16) at the positions given by slot_mapping [T] (int32/int64,
    vLLM's block * G + offset, negative = skip) and block_to_slot int32 [num_blocks]. In place.

    With ``block_to_slot=None``, slot_mapping holds flattened pool rows (slot * G + offset, as
    kvarn.vllm_plugin.pool.StepPlan.write_rows) and is used directly."""
    check(key.dim() == 3 and value.shape == key.shape, f"key/value must be [T, Hk, D], got {tuple(key.shape)}, "
          f"{tuple(value.shape)}")
    t, hk, d = key.shape
    check(d in (64, 128, 256), f"head_dim must be one of (64, 128, 256), got {d}")
    check(key.dtype in ACT_DTYPES and value.dtype == key.dtype,
          f"key/value dtype must be one of {ACT_DTYPES} (same for both), got {key.dtype}, {value.dtype}")
    check(key.stride(2) == 1 and value.stride(2) == 1, "key/value last dim must be contiguous")
    for name, p in (("pool_k", pool_k), ("pool_v", pool_v)):
        check(p.dim() == 4 and p.shape[1:] == (group, hk, d) and p.dtype in POOL_DTYPES and p.stride(3) == 1,
              f"{name} must be contiguous-last [slots, {group}, {hk}, {d}] of {POOL_DTYPES}, got {p.dtype} "
              f"{tuple(p.shape)}")
    check(pool_k.stride() == pool_v.stride(), "pool_k and pool_v must share strides")
    check(slot_mapping.dim() == 1 and slot_mapping.shape[0] >= t and slot_mapping.dtype in (torch.int32, torch.int64),
          f"slot_mapping must be int32/int64 [>= {t}], got {slot_mapping.dtype} {tuple(slot_mapping.shape)}")
    direct = block_to_slot is None
    check(direct or (block_to_slot.dtype == torch.int32 and block_to_slot.dim() == 1),
          "block_to_slot must be int32 [num_blocks] or None (slot_mapping = pool rows)")
    if t == 0:
        return
    sgn = hadamard_signs(d, key.dtype, key.device)
    bt = 16
    _rotate_append_kernel[(triton.cdiv(t, bt), hk)](
        key, value, sgn, pool_k, pool_v, slot_mapping if direct else block_to_slot, slot_mapping, t,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        pool_k.stride(0), pool_k.stride(1), pool_k.stride(2), 1.0 / math.sqrt(d),
        D=d, G=group, BT=bt, DC=min(d, 64), UPCAST=INTERPRET and key.dtype == torch.bfloat16,
        DIRECT=direct, num_warps=4,
    )
