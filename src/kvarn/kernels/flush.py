"""Flush: balance + round + pack complete pool tiles into uint8 records (kvarn.config layout).

One program encodes one tile: (flush item i, KV head h, K or V). The tile sits in registers:

* K tile M [D, G] = pool_k[slots[i], :, h, :]^T (rows = channels), V tile M [G, D] = pool_v rows.
* balance (kvarn.reference.balance, method.md §1.3): optional RMS prescale; log-scales a [C],
  b [R] from 0; ``iters`` rounds of column pass (a += ln clamp(std_col)), row pass, each clipped
  to log_clamp; unbiased std; best imbalance (ties -> later, identity competes).
* RTN along rows (kvarn.reference.rtn): per row lo/hi = min/max, or shrunk about the midpoint by
  each clip ratio, keeping the lowest squared error (strict <, first wins); round half to even.
* scales folded and stored fp16: row_scale = row*step, row_zero = row*lo, col_scale = col;
  codes packed LSB-first along the row; record padding zeroed.

Not bit-exact with the PyTorch reference: the balanced tile m * exp(-a) * exp(-b) is never formed (a
round's row stds are exp(-b) times the stds of m's rows with columns scaled by exp(-a), and likewise for
columns), the stds come in one pass from the sum and the sum of squares (the reference subtracts the mean
first), the row stds after a row pass are sr * exp(b_old - b_new) (a row scaled by c has c times its
std), and fp32 reductions run in another order, with multiplications by exp(-a) / 1/step where the
reference divides. That can flip a code at a rounding boundary or, rarely, the best iterate; tests bound
the difference.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import triton
import triton.language as tl

from kvarn.config import KvarnConfig, Numerics
from kvarn.kernels._common import FLUSH_WARPS, check, layout_constexprs, num_sms


@triton.jit
def _scaled_std(m, f, AXIS: tl.constexpr, N: tl.constexpr):
    """Unbiased std along AXIS of x = m [R, C] scaled along AXIS by f (AXIS 0: f [R], x = m * f[:, None];
    AXIS 1: f [C], x = m * f[None, :]) in one pass: var = (sum x^2 - (sum x)^2 / N) / (N - 1), so a
    round needs no scaled copy of the tile and the two sums do not wait on each other."""
    if AXIS == 0:
        x = m * f[:, None]  # f [R]: scale rows, reduce over them
    else:
        x = m * f[None, :]  # f [C]: scale columns, reduce over them
    s1 = tl.sum(x, AXIS)
    s2 = tl.sum(x * x, AXIS)
    return tl.sqrt(tl.maximum(s2 - s1 * s1 * (1.0 / N), 0.0) * (1.0 / (N - 1)))


@triton.jit
def _imbalance(sc, sr):
    return tl.max(sc, 0) / tl.maximum(tl.min(sc, 0), 1e-8) + tl.max(sr, 0) / tl.maximum(tl.min(sr, 0), 1e-8)


@triton.jit
def _round_half_even(x):
    """Round half to even (torch.round) for |x| < 2^22: fp32 addition of 1.5 * 2^23 rounds RNE."""
    return (x + 12582912.0) - 12582912.0


@triton.jit
def _encode_tile(m, clip_ptr, NCLIP, R: tl.constexpr, C: tl.constexpr, BITS: tl.constexpr,
                 ITERS: tl.constexpr, LOG_LO: tl.constexpr, LOG_HI: tl.constexpr,
                 STD_LO: tl.constexpr, STD_HI: tl.constexpr, PRESCALE: tl.constexpr):
    """m [R, C] fp32 -> (codes [R, C] fp32 ints, row_scale [R], row_zero [R], col_scale [C])."""
    if PRESCALE:
        rms = tl.maximum(tl.sqrt(tl.sum(tl.sum(m * m, 1), 0) / (R * C)), 1e-12)
        m = m / rms
    else:
        rms = 1.0
    a = tl.zeros([C], tl.float32)
    b = tl.zeros([R], tl.float32)
    sc = _scaled_std(m, tl.full([R], 1.0, tl.float32), 0, R)
    best = _imbalance(sc, _scaled_std(m, tl.full([C], 1.0, tl.float32), 1, C))
    best_a = a
    best_b = b
    for _ in range(ITERS):
        # balanced tile = m * exp(-a)[None, :] * exp(-b)[:, None], never formed: a row's std is exp(-b[r])
        # times the std of m's row with columns scaled by exp(-a), and a column's likewise
        a = tl.minimum(tl.maximum(a + tl.log(tl.minimum(tl.maximum(sc, STD_LO), STD_HI)), LOG_LO), LOG_HI)
        ia = tl.exp(-a)
        sr = _scaled_std(m, ia, 1, C) * tl.exp(-b)
        b_new = tl.minimum(tl.maximum(b + tl.log(tl.minimum(tl.maximum(sr, STD_LO), STD_HI)), LOG_LO), LOG_HI)
        # rescaling row r by exp(b - b_new) scales its std by the same factor
        rs = tl.exp(b - b_new)
        b = b_new
        sc = _scaled_std(m, tl.exp(-b), 0, R) * ia
        imb = _imbalance(sc, sr * rs)
        take = imb <= best
        best = tl.where(take, imb, best)
        best_a = tl.where(take, a, best_a)
        best_b = tl.where(take, b, best_b)
    col = tl.exp(best_a)
    row = tl.exp(best_b)
    bal = m * tl.exp(-best_a)[None, :] * tl.exp(-best_b)[:, None]
    row = row * rms

    QMAX: tl.constexpr = (1 << BITS) - 1
    mn = tl.min(bal, 1)
    mx = tl.max(bal, 1)
    best_err = tl.full([R], float("inf"), tl.float32)
    best_lo = mn
    best_step = tl.maximum((mx - mn) / QMAX, 1e-10)
    for i in range(NCLIP):
        ratio = tl.load(clip_ptr + i)
        mid = (mn + mx) / 2
        half = (mx - mn) / 2 * ratio
        lo = tl.where(ratio == 1.0, mn, mid - half)
        hi = tl.where(ratio == 1.0, mx, mid + half)
        step = tl.maximum((hi - lo) / QMAX, 1e-10)
        q = tl.minimum(tl.maximum(_round_half_even((bal - lo[:, None]) * (1.0 / step)[:, None]), 0.0), QMAX)
        e = q * step[:, None] + lo[:, None] - bal
        err = tl.sum(e * e, 1)
        tk = err < best_err
        best_err = tl.where(tk, err, best_err)
        best_lo = tl.where(tk, lo, best_lo)
        best_step = tl.where(tk, step, best_step)
    q = tl.minimum(tl.maximum(_round_half_even((bal - best_lo[:, None]) * (1.0 / best_step)[:, None]), 0.0), QMAX)
    return q, row * best_step, row * best_lo, col


@triton.jit
def _pack_store(ptr, q, R: tl.constexpr, C: tl.constexpr, BITS: tl.constexpr, PLANES: tl.constexpr):
    """Pack codes q [R, C] LSB-first along C and store the bytes transposed, [C*BITS/8, R] at ptr (uint8;
    kvarn.config's record layout). PLANES: byte j holds columns p*(C/P) + j (K: token planes); otherwise
    columns P*j + p (V: channels)."""
    P: tl.constexpr = 8 // BITS
    qi = q.to(tl.int32)
    if PLANES:
        qi = tl.reshape(tl.permute(tl.reshape(qi, [R, P, C // P]), (0, 2, 1)), [R, C // P, P])
    else:
        qi = tl.reshape(qi, [R, C // P, P])
    sh = tl.arange(0, P) * BITS
    packed = tl.sum(qi << sh[None, None, :], 2).to(tl.uint8)
    r = tl.arange(0, R)
    j = tl.arange(0, C // P)
    tl.store(ptr + r[:, None] + j[None, :] * R, packed)


@triton.jit
def _flush_kernel(
    pk_ptr, pv_ptr, kv_ptr, kvh_ptr, slots_ptr, blocks_ptr, rows_ptr, clip_ptr, NCLIP, layers_ptr, addr_ptr, L,
    stride_ps, stride_pn, stride_ph, stride_kvb,
    MULTI: tl.constexpr, ROWS: tl.constexpr, IS_V: tl.constexpr, ITERS: tl.constexpr, LOG_LO: tl.constexpr, LOG_HI: tl.constexpr,
    STD_LO: tl.constexpr, STD_HI: tl.constexpr, PRESCALE: tl.constexpr, RAW: tl.constexpr, PADP2: tl.constexpr,
    D: tl.constexpr, G: tl.constexpr, KB: tl.constexpr, VB: tl.constexpr, R: tl.constexpr,
    K_CODES: tl.constexpr, K_RS: tl.constexpr, K_RZ: tl.constexpr, K_CS: tl.constexpr,
    V_CODES: tl.constexpr, V_CS: tl.constexpr, V_RS: tl.constexpr, V_RZ: tl.constexpr,
):
    i = tl.program_id(0)
    h = tl.program_id(1)
    if MULTI:  # per-item layer: base addresses from addr [3, L] (pool_k, pool_v, kv_cache) int64
        layer = tl.load(layers_ptr + i)
        # torch allocations (and vLLM's per-layer cache views) are 16-byte aligned: say so, so the
        # loads and stores stay vectorized
        pk_ptr = tl.multiple_of(tl.load(addr_ptr + layer).to(tl.pointer_type(pk_ptr.dtype.element_ty)), 16)
        pv_ptr = tl.multiple_of(tl.load(addr_ptr + L + layer).to(tl.pointer_type(pv_ptr.dtype.element_ty)), 16)
        kv_addr = tl.load(addr_ptr + 2 * L + layer)
        kv_ptr = tl.multiple_of(kv_addr.to(tl.pointer_type(tl.uint8)), 16)
        kvh_ptr = tl.multiple_of(kv_addr.to(tl.pointer_type(tl.float16)), 16)
    slot = tl.load(slots_ptr + i).to(tl.int64)
    blk = tl.load(blocks_ptr + i).to(tl.int64)
    pbase = slot * stride_ps + h * stride_ph
    rb = blk * stride_kvb + h * R
    g = tl.arange(0, G)
    d = tl.arange(0, D)
    if ROWS:  # sink "token": row 0 of the tile (position 0 of a first block) is kept fp16 in flat pool row r
        r = tl.load(rows_ptr + i).to(tl.int64)
        dst = tl.maximum((r // G) * stride_ps + (r % G) * stride_pn + h * stride_ph, 0)
        keep = (d * 0 + r) >= 0
        if IS_V:
            tl.store(pv_ptr + dst + d, tl.load(pv_ptr + pbase + d), mask=keep)
        else:
            tl.store(pk_ptr + dst + d, tl.load(pk_ptr + pbase + d), mask=keep)
    if IS_V:
        m = tl.load(pv_ptr + pbase + g[:, None] * stride_pn + d[None, :]).to(tl.float32)  # [G, D]
        q, rs, rz, cs = _encode_tile(m, clip_ptr, NCLIP, G, D, VB, ITERS, LOG_LO, LOG_HI, STD_LO, STD_HI, PRESCALE)
        _pack_store(kv_ptr + rb + V_CODES, q, G, D, VB, False)
        tl.store(kvh_ptr + rb // 2 + V_CS // 2 + d, cs.to(tl.float16))
        tl.store(kvh_ptr + rb // 2 + V_RS // 2 + g, rs.to(tl.float16))
        tl.store(kvh_ptr + rb // 2 + V_RZ // 2 + g, rz.to(tl.float16))
        if RAW < R:
            z = tl.arange(0, PADP2)
            tl.store(kv_ptr + rb + RAW + z, tl.zeros([PADP2], tl.uint8), mask=z < R - RAW)
    else:
        m = tl.load(pk_ptr + pbase + g[None, :] * stride_pn + d[:, None]).to(tl.float32)  # [D, G]
        q, rs, rz, cs = _encode_tile(m, clip_ptr, NCLIP, D, G, KB, ITERS, LOG_LO, LOG_HI, STD_LO, STD_HI, PRESCALE)
        _pack_store(kv_ptr + rb + K_CODES, q, D, G, KB, True)
        tl.store(kvh_ptr + rb // 2 + K_RS // 2 + d, rs.to(tl.float16))
        tl.store(kvh_ptr + rb // 2 + K_RZ // 2 + d, rz.to(tl.float16))
        tl.store(kvh_ptr + rb // 2 + K_CS // 2 + g, cs.to(tl.float16))


@functools.lru_cache(maxsize=None)
def _clip_tensor(clips: tuple[float, ...], device: str) -> torch.Tensor:
    return torch.tensor(clips, dtype=torch.float32, device=torch.device(device))


def _numerics_constexprs(num: Numerics) -> dict:
    return dict(ITERS=num.iters, LOG_LO=float(num.log_clamp[0]), LOG_HI=float(num.log_clamp[1]),
                STD_LO=float(num.std_clamp[0]), STD_HI=float(num.std_clamp[1]), PRESCALE=bool(num.prescale_rms))


def flush_tiles(pool_k: torch.Tensor, pool_v: torch.Tensor, kv_cache: torch.Tensor, slots: torch.Tensor,
                blocks: torch.Tensor, cfg: KvarnConfig, num_warps: int | None = None,
                layers: torch.Tensor | None = None, layer_addrs: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> None:
    """Encode pool tiles into records, in place: for every i and KV head h,
    ``kv_cache[blocks[i], h] = encode(pool_k[slots[i], :, h], pool_v[slots[i], :, h])``.
    rows int32 [N] (optional, sink "token"): where rows[i] >= 0, row 0 of the tile is also copied to the flat
    pool row rows[i] (``pool.reshape(-1, Hk, D)[rows[i]] = pool[slots[i], 0]``, K and V), outside every tile
    being flushed.

    pool_k/pool_v [slots, G, Hk, D] rotated rows (fp16/bf16/fp32, all G rows valid);
    kv_cache uint8 [NB, Hk, R]; slots, blocks int32 [N] on the same device. block_to_slot is
    left to the caller (flip the flushed blocks to -1 after this returns, stream-ordered).
    Inputs must be finite (the reference raises on inf/NaN; the kernel cannot).
    layers/layer_addrs: internal, see :func:`flush_tiles_layers`.
    """
    d, g = cfg.head_dim, cfg.group
    check(kv_cache.dtype == torch.uint8 and kv_cache.dim() == 3 and kv_cache.shape[2] == cfg.record_bytes
          and kv_cache.stride(2) == 1 and kv_cache.stride(1) == cfg.record_bytes,
          f"kv_cache must be uint8 [NB, Hk, {cfg.record_bytes}] with contiguous records, got "
          f"{kv_cache.dtype} {tuple(kv_cache.shape)} strides {kv_cache.stride()}")
    hk = kv_cache.shape[1]
    for name, p in (("pool_k", pool_k), ("pool_v", pool_v)):
        check(p.dim() == 4 and p.shape[1:] == (g, hk, d) and p.stride(3) == 1
              and p.dtype in (torch.float16, torch.bfloat16, torch.float32),
              f"{name} must be [slots, {g}, {hk}, {d}] fp16/bf16/fp32 with contiguous rows, got {p.dtype} "
              f"{tuple(p.shape)}")
    check(pool_k.stride() == pool_v.stride(), "pool_k and pool_v must share strides")
    check(slots.dtype == torch.int32 and blocks.dtype == torch.int32 and slots.shape == blocks.shape
          and slots.dim() == 1, f"slots/blocks must be int32 [N], got {slots.dtype} {tuple(slots.shape)}, "
          f"{blocks.dtype} {tuple(blocks.shape)}")
    n = slots.shape[0]
    if rows is not None:
        check(rows.dtype == torch.int32 and rows.shape == slots.shape,
              f"rows must be int32 [N] like slots, got {rows.dtype} {tuple(rows.shape)}")
    if n == 0:
        return
    num = cfg.numerics
    clips = _clip_tensor(tuple(float(c) for c in num.clip_ratios), str(kv_cache.device))
    raw = cfg.raw_record_bytes
    if num_warps is None:
        num_warps = flush_warps(cfg, few=n * hk <= num_sms(kv_cache.device))
    kw = dict(RAW=raw, PADP2=triton.next_power_of_2(max(cfg.record_bytes - raw, 1)), num_warps=num_warps,
              **_numerics_constexprs(num), **layout_constexprs(cfg))
    kvh = kv_cache.view(torch.float16)
    multi = layer_addrs is not None
    lay, addr, nl = (layers, layer_addrs, layer_addrs.shape[1]) if multi else (slots, slots, 0)
    for is_v in (False, True):
        # clip_ratios[0] == 1.0 (full range), so NCLIP = 1 means "no clipping" for this tensor
        nclip = len(num.clip_ratios_for(cfg.value_bits if is_v else cfg.key_bits))
        _flush_kernel[(n, hk)](pool_k, pool_v, kv_cache, kvh, slots, blocks, slots if rows is None else rows, clips,
                               nclip, lay, addr, nl, pool_k.stride(0), pool_k.stride(1), pool_k.stride(2),
                               kv_cache.stride(0), MULTI=multi, ROWS=rows is not None, IS_V=is_v, **kw)


def flush_warps(cfg: KvarnConfig, few: bool) -> int:
    """Warps per flush program: ``KVARN_FLUSH_WARPS``, else 8 for a launch of at most one program per SM
    (``few``), 4 beyond (doubled for tiles larger than 128 x 128). H200, bench_write 2026-11-30: 8 warps encode a
    lone tile fastest (89 vs 116 us at 4), 4 warps give the most tiles per second once the launch has more
    programs than SMs (0.42 vs 0.64 us per record)."""
    return FLUSH_WARPS or ((8 if few else 4) * (1 if cfg.head_dim * cfg.group <= 128 * 128 else 2))


def flush_tiles_layers(pools_k: Sequence[torch.Tensor], pools_v: Sequence[torch.Tensor],
                       caches: Sequence[torch.Tensor], layers: torch.Tensor, slots: torch.Tensor,
                       blocks: torch.Tensor, cfg: KvarnConfig, num_warps: int | None = None,
                       rows: torch.Tensor | None = None) -> None:
    """One launch for the flush items of many layers (a step's complete tiles, all layers):
    item i encodes ``pools_k[layers[i]][slots[i], :, h]`` (and pools_v) into
    ``caches[layers[i]][blocks[i], h]`` for every KV head h (rows: as in :func:`flush_tiles`, per item,
    within the item's layer). Every layer's tensors must share
    shape, dtype and strides; layers int32 [N]. One flush_tiles launch costs ~the latency of a
    single tile encode whatever N (docs/gpu.md), so batching layers divides the flush time by
    the layer count when few tiles complete per step."""
    nl = len(caches)
    check(nl >= 1 and len(pools_k) == nl and len(pools_v) == nl,
          f"need one pool_k, pool_v and kv_cache per layer, got {len(pools_k)}, {len(pools_v)}, {nl}")
    for name, ts in (("pools_k", pools_k), ("pools_v", pools_v), ("caches", caches)):
        t0 = ts[0]
        check(all(t.shape == t0.shape and t.stride() == t0.stride() and t.dtype == t0.dtype and t.device == t0.device
                  for t in ts), f"all {name} must share shape, strides, dtype and device")
    check(layers.dtype == torch.int32 and layers.shape == slots.shape,
          f"layers must be int32 [N] like slots, got {layers.dtype} {tuple(layers.shape)}")
    check(all(t.data_ptr() % 16 == 0 for ts in (pools_k, pools_v, caches) for t in ts),
          "every layer's pool and cache tensor must start 16-byte aligned")
    addrs = _layer_addrs(tuple(t.data_ptr() for ts in (pools_k, pools_v, caches) for t in ts), nl,
                         str(caches[0].device))
    flush_tiles(pools_k[0], pools_v[0], caches[0], slots, blocks, cfg, num_warps, layers=layers, layer_addrs=addrs,
                rows=rows)


@functools.lru_cache(maxsize=64)
def _layer_addrs(ptrs: tuple[int, ...], nl: int, device: str) -> torch.Tensor:
    return torch.tensor(ptrs, dtype=torch.int64, device=torch.device(device)).view(3, nl)


def encode_tiles_triton(k_rot: torch.Tensor, v_rot: torch.Tensor, cfg: KvarnConfig) -> torch.Tensor:
    """Drop-in for kvarn.reference.encode_tiles: k_rot, v_rot [N, G, D] -> uint8 [N, record_bytes]."""
    g, d = cfg.group, cfg.head_dim
    check(k_rot.dim() == 3 and k_rot.shape[1:] == (g, d) and v_rot.shape == k_rot.shape,
          f"encode_tiles_triton expects k_rot, v_rot [N, {g}, {d}], got {tuple(k_rot.shape)}, {tuple(v_rot.shape)}")
    n = k_rot.shape[0]
    pk = k_rot.contiguous().unsqueeze(2)
    pv = v_rot.to(pk.dtype).contiguous().unsqueeze(2)
    out = torch.empty(n, 1, cfg.record_bytes, dtype=torch.uint8, device=k_rot.device)
    idx = torch.arange(n, dtype=torch.int32, device=k_rot.device)
    flush_tiles(pk, pv, out, idx, idx, cfg)
    return out.reshape(n, cfg.record_bytes)
