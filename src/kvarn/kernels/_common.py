"""Shared helpers of the Triton launchers: Hadamard operands, record-layout constants, checks.

Nothing here launches a kernel. The launchers pass every record offset as a ``tl.constexpr`` so
the kernels compile one specialization per (preset, head_dim).
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

from kvarn.config import KvarnConfig, kernel_env
from kvarn.reference.hadamard import hadamard_matrix

LOG2E = 1.4426950408889634
# Triton's CPU interpreter (TRITON_INTERPRET=1) mis-computes bf16 tl.dot: kernels then upcast
# bf16 dot operands to fp32 (exact for the +-1 / probability operands used here).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Decode dequant by inline PTX (PRMT into the fp16 exponent, decode_kernel._codes_f16); KVARN_DECODE_ASM=0
# selects the plain integer-op form (the interpreter always uses it). For A/B benchmarks and fallback.
DECODE_ASM = kernel_env("KVARN_DECODE_ASM") == "1" and not INTERPRET
# Records requested into L2 this many tiles ahead by the decode kernel (0 = off); KVARN_DECODE_PREFETCH overrides.
# Defaults (prefetch 1, ahead 2): the fastest in the H200 probe and A/B of 2026-11-30 (docs/gpu.md)
DECODE_PREFETCH = int(kernel_env("KVARN_DECODE_PREFETCH"))
# Record-loop loads run ahead of their tile (0 off, 1 ids, 2 ids + K scales); KVARN_DECODE_AHEAD overrides
DECODE_AHEAD = int(kernel_env("KVARN_DECODE_AHEAD"))
# Rows per chunk of a pool tile in the decode kernel's pass 2 (0 = the whole tile): below G only the chunks holding
# valid rows run, so a partly filled tail costs its rows. KVARN_DECODE_POOL_BN overrides
DECODE_POOL_BN = int(kernel_env("KVARN_DECODE_POOL_BN"))
# Pool tiles at the ends of a decode program's range (sink, tail) skip the record pass; KVARN_DECODE_TRIM=0: they run
# it masked, as before 2026-12-01
DECODE_TRIM = kernel_env("KVARN_DECODE_TRIM") == "1"
# Rotations in the decode kernel as two 16-wide products (H_D = H_m (x) H_16) instead of one [D, D] operand;
# KVARN_DECODE_ROTF=0: the [D, D] operand
DECODE_ROTF = kernel_env("KVARN_DECODE_ROTF") == "1"
# The decode kernel's record pass transposed (tokens on the MMA's M axis, the few query rows on N): "auto" = with
# 2-warp programs (decode_attention.choose_decode_swap), "1" / "0" always / never; KVARN_DECODE_SWAP overrides
DECODE_SWAP = kernel_env("KVARN_DECODE_SWAP")
# The record pass by the Gluon kernel (decode_gluon.py) where it applies (default); "0": the Triton kernel alone
DECODE_GLUON = kernel_env("KVARN_DECODE_GLUON") == "1"
# Warps per decode program: 0 = by launch size (kernels.decode_attention.choose_decode_warps), else 2 or 4 always;
# KVARN_DECODE_WARPS overrides
DECODE_WARPS = int(kernel_env("KVARN_DECODE_WARPS"))
# Warps per flush program (one [G, D] tile); 0 = by launch size and tile size (flush.flush_tiles).
# KVARN_FLUSH_WARPS overrides, for A/B runs.
FLUSH_WARPS = int(kernel_env("KVARN_FLUSH_WARPS"))
# Gluon's API is experimental and moves between Triton releases (3.9 replaced async_copy_global_to_shared by
# async_load): the Gluon decode kernels (decode_gluon.py, decode_gluon_pool.py) are written for, and compiled and timed
# with, Triton 3.6 (torch 2.11, vLLM 0.26's CUDA stack). Other versions run the Triton kernel alone.
GLUON_TRITON_VERSIONS = ("3.6.",)
GLUON = False
if triton.__version__.startswith(GLUON_TRITON_VERSIONS):
    try:
        from triton.experimental import gluon as _gluon  # noqa: F401
        from triton.experimental.gluon.language.nvidia.ampere import async_copy as _cp  # noqa: F401
        from triton.experimental.gluon.language.nvidia.ampere import mma_v2 as _mma_v2  # noqa: F401
        GLUON = True
    except ImportError:
        GLUON = False
POOL_DTYPES = (torch.float16, torch.bfloat16)
ACT_DTYPES = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def _hadamard_cached(d: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return hadamard_matrix(d, dtype, torch.device(device)).contiguous()


def hadamard(d: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalized Sylvester Hadamard H_D [D, D] (kvarn.reference.hadamard_matrix), cached per device."""
    return _hadamard_cached(d, dtype, str(device))


@functools.lru_cache(maxsize=None)
def _signs_cached(d: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return (hadamard_matrix(d, torch.float64) * math.sqrt(d)).round().to(dtype=dtype, device=torch.device(device))


@functools.cache
def _factor_signs_cached(d: int, device: str) -> torch.Tensor:
    m = d // 16
    h16 = (hadamard_matrix(16, torch.float64) * 4).round()
    hm = (hadamard_matrix(m, torch.float64) * math.sqrt(m)).round()
    return torch.stack([h16, torch.block_diag(*[hm] * (16 // m))]).to(torch.bfloat16).to(torch.device(device))


def hadamard_factor_signs(d: int, device: torch.device) -> torch.Tensor:
    """bf16 [2, 16, 16]: H_16 and blockdiag(H_m, ..., H_m) with m = D / 16 (D = 64 or 128), +-1 entries: the
    Sylvester matrix of order D is H_m (x) H_16 (kron; column 16a + b), the decode kernel's factored rotation."""
    check(d in (64, 128), f"factored rotation needs head_dim 64 or 128, got {d}")
    return _factor_signs_cached(d, str(device))


def hadamard_signs(d: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """sqrt(D) * H_D: the +-1 Sylvester matrix [D, D], exact in fp16/bf16 (used as a tl.dot operand)."""
    return _signs_cached(d, dtype, str(device))


def layout_constexprs(cfg: KvarnConfig) -> dict[str, int]:
    """Record byte offsets and sizes of ``cfg`` as kernel keyword arguments (all tl.constexpr)."""
    off = cfg.offsets
    return dict(
        D=cfg.head_dim,
        G=cfg.group,
        KB=cfg.key_bits,
        VB=cfg.value_bits,
        R=cfg.record_bytes,
        K_CODES=off["k_codes"][0],
        K_RS=off["k_row_scale"][0],
        K_RZ=off["k_row_zero"][0],
        K_CS=off["k_col_scale"][0],
        V_CODES=off["v_codes"][0],
        V_CS=off["v_col_scale"][0],
        V_RS=off["v_row_scale"][0],
        V_RZ=off["v_row_zero"][0],
    )


@functools.lru_cache(maxsize=None)
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 132 (an H100/H200) elsewhere, so the launchers' shape
    policies (split-K, flush warps) pick the same settings in Triton's interpreter."""
    if device.type != "cuda":
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


def prefetch_lanes(cfg: KvarnConfig) -> int:
    """PL of the decode kernel's L2 prefetch: the record's 128-byte lines, rounded up to a power of two."""
    return triton.next_power_of_2(-(-cfg.record_bytes // 128))


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def check_cache(kv_cache: torch.Tensor, pool_k: torch.Tensor, pool_v: torch.Tensor,
                block_to_slot: torch.Tensor, cfg: KvarnConfig) -> tuple[int, int]:
    """Validate one layer's cache state; returns (num_blocks, num_kv_heads)."""
    check(kv_cache.dtype == torch.uint8 and kv_cache.dim() == 3 and kv_cache.shape[2] == cfg.record_bytes,
          f"kv_cache must be uint8 [num_blocks, num_kv_heads, {cfg.record_bytes}] for {cfg.kv_cache_dtype} "
          f"at head_dim {cfg.head_dim}, got {kv_cache.dtype} {tuple(kv_cache.shape)}")
    check(kv_cache.stride(2) == 1 and kv_cache.stride(1) == cfg.record_bytes,
          f"kv_cache records must be contiguous per block, got strides {kv_cache.stride()}")
    nb, hk = kv_cache.shape[0], kv_cache.shape[1]
    for name, p in (("pool_k", pool_k), ("pool_v", pool_v)):
        check(p.dim() == 4 and p.shape[1:] == (cfg.group, hk, cfg.head_dim),
              f"{name} must be [num_slots, {cfg.group}, {hk}, {cfg.head_dim}], got {tuple(p.shape)}")
        check(p.dtype in POOL_DTYPES, f"{name} dtype must be one of {POOL_DTYPES}, got {p.dtype}")
        check(p.stride(3) == 1, f"{name} last dim must be contiguous, got strides {p.stride()}")
    check(pool_k.stride() == pool_v.stride() and pool_k.dtype == pool_v.dtype,
          "pool_k and pool_v must share dtype and strides")
    check(block_to_slot.dtype == torch.int32 and block_to_slot.dim() == 1 and block_to_slot.shape[0] >= nb,
          f"block_to_slot must be int32 [>= {nb}], got {block_to_slot.dtype} {tuple(block_to_slot.shape)}")
    devs = {t.device for t in (kv_cache, pool_k, pool_v, block_to_slot)}
    check(len(devs) == 1, f"all cache tensors must be on one device, got {devs}")
    return nb, hk


@triton.jit
def dot_bf16_safe(a, b, acc, UPCAST: tl.constexpr):
    """tl.dot(a, b, acc); with UPCAST (interpreter + bf16) the operands go through fp32."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    return tl.dot(a, b, acc)
