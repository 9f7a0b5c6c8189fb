"""Asymmetric per-row round-to-nearest and LSB-first bit packing (method.md §1.4-1.5).

RTN over the last axis of x [N, R, C]: lo/hi = row min/max (optionally shrunk toward the row's
midpoint by a clip ratio chosen per row to minimise the row's squared error),
step = max((hi - lo) / (2^bits - 1), 1e-10), q = clamp(round((x - lo) / step), 0, 2^bits - 1),
x_hat = q * step + lo. ``torch.round`` rounds half to even.

Packing: P = 8 / bits codes per byte along the last axis; code c -> byte c // P, bits at shift
(c % P) * bits. Lossless: unpack(pack(q)) == q exactly.
"""

from __future__ import annotations

from typing import Sequence

import torch


def rtn(x: torch.Tensor, bits: int, clip_ratios: Sequence[float] = (1.0,)):
    """x [N, R, C] fp32 -> (codes uint8 [N, R, C], step [N, R], lo [N, R])."""
    qmax = (1 << bits) - 1
    x = x.float()
    mn, mx = x.amin(-1), x.amax(-1)
    best = None
    for ratio in clip_ratios:
        if ratio == 1.0:
            lo, hi = mn, mx
        else:
            mid, half = (mn + mx) / 2, (mx - mn) / 2 * ratio
            lo, hi = mid - half, mid + half
        step = ((hi - lo) / qmax).clamp_min(1e-10)
        q = ((x - lo[..., None]) / step[..., None]).round().clamp(0, qmax)
        if len(clip_ratios) == 1:
            return q.to(torch.uint8), step, lo
        err = (q * step[..., None] + lo[..., None] - x).pow(2).sum(-1)
        if best is None:
            best = [err, q, step, lo]
        else:
            take = err < best[0]
            best[0] = torch.where(take, err, best[0])
            best[1] = torch.where(take[..., None], q, best[1])
            best[2] = torch.where(take, step, best[2])
            best[3] = torch.where(take, lo, best[3])
    return best[1].to(torch.uint8), best[2], best[3]


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes uint8 [..., C] (values < 2^bits) -> packed uint8 [..., C * bits / 8], LSB first."""
    per = 8 // bits
    if codes.shape[-1] % per:
        raise ValueError(f"last dim {codes.shape[-1]} not divisible by {per} codes per byte")
    c = codes.to(torch.uint8).reshape(*codes.shape[:-1], codes.shape[-1] // per, per)
    out = torch.zeros(c.shape[:-1], dtype=torch.uint8, device=codes.device)
    for i in range(per):
        out |= c[..., i] << (i * bits)
    return out


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """packed uint8 [..., B] -> codes uint8 [..., B * 8 / bits] (inverse of :func:`pack_codes`)."""
    per = 8 // bits
    mask = (1 << bits) - 1
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    codes = (packed.unsqueeze(-1) >> shifts) & mask
    return codes.reshape(*packed.shape[:-1], packed.shape[-1] * per)
