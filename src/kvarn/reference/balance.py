"""Iterative log-space column/row std balancing of tiles (method.md §1.3).

A tile M [R, C] (K: [D, G] channels x tokens; V: [G, D] tokens x channels) is written as
``M = B * a[None, :] * b[:, None]`` with column scales a [C] and row scales b [R] chosen so that the
balanced tile B has near-equal std in every row and column. Batched over N tiles: M [N, R, C].

Reference numerics: log-scales start at 0; each of ``iters`` rounds does a column pass then a row
pass, adding ln(std) (unbiased, clamped to ``std_clamp``) to the log-scale and clipping it to
``log_clamp``; after each round the imbalance ``max/min col std + max/min row std`` is measured and
the best iterate (ties -> later) is kept; the identity (round 0) competes too. The mean is never
subtracted: this is pure scaling.
"""

from __future__ import annotations

import torch

from kvarn.config import Numerics


def imbalance(x: torch.Tensor) -> torch.Tensor:
    """x [N, R, C] -> [N]: max_col std / min_col std + max_row std / min_row std (unbiased std)."""
    sc = x.std(dim=-2, unbiased=True)
    sr = x.std(dim=-1, unbiased=True)
    return sc.amax(-1) / sc.amin(-1).clamp_min(1e-8) + sr.amax(-1) / sr.amin(-1).clamp_min(1e-8)


def balance(m: torch.Tensor, numerics: Numerics) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Balance tiles m [N, R, C] (fp32).

    Returns (balanced [N, R, C], col_scale [N, C], row_scale [N, R]) with
    ``m == balanced * col_scale[:, None, :] * row_scale[:, :, None]`` (up to fp32 rounding).
    With ``numerics.prescale_rms`` the tile's global RMS is divided out first and folded into
    row_scale, so the -0.3 log clamp acts on a unit-RMS tile.
    """
    if m.dim() != 3:
        raise ValueError(f"balance expects [N, R, C] tiles, got shape {tuple(m.shape)}")
    m = m.float()
    n, r, c = m.shape
    if numerics.prescale_rms:
        rms = m.pow(2).mean(dim=(-2, -1)).sqrt().clamp_min(1e-12)  # [N]
        m = m / rms[:, None, None]
    else:
        rms = None
    lo, hi = numerics.log_clamp
    slo, shi = numerics.std_clamp
    a = m.new_zeros(n, c)
    b = m.new_zeros(n, r)
    best_a, best_b = a.clone(), b.clone()
    best = imbalance(m) if (r > 1 and c > 1) else m.new_zeros(n)
    cur = m
    for _ in range(numerics.iters):
        a = (a + cur.std(dim=-2, unbiased=True).clamp(slo, shi).log()).clamp(lo, hi)
        cur = m / a.exp()[:, None, :] / b.exp()[:, :, None]
        b = (b + cur.std(dim=-1, unbiased=True).clamp(slo, shi).log()).clamp(lo, hi)
        cur = m / a.exp()[:, None, :] / b.exp()[:, :, None]
        imb = imbalance(cur)
        take = imb <= best
        best = torch.where(take, imb, best)
        best_a = torch.where(take[:, None], a, best_a)
        best_b = torch.where(take[:, None], b, best_b)
    col = best_a.exp()
    row = best_b.exp()
    balanced = m / col[:, None, :] / row[:, :, None]
    if rms is not None:
        row = row * rms[:, None]
    return balanced, col, row
