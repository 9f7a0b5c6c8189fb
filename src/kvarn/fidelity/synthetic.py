"""Synthetic K/V/Q with the structure real LLM caches show, for codec fidelity checks.

:func:`synthetic_kv` returns post-RoPE keys, values and queries of one layer, ``[T, H, D]``:

Keys, built pre-RoPE then rotated with a real RoPE (HF ``rotate_half`` pairing: channel i with i + D/2,
frequency theta^(-2i/D)):
  * per-channel mean offsets mu_c ~ N(0, 0.7^2) and stds sigma_c ~ LogNormal(0, 0.4), per KV head;
  * outlier channels: ``outlier_pairs`` (default 2) RoPE pairs (4 channels) picked in the low-frequency half,
    whose mean and std are multiplied by U(6, 10) -- after RoPE they rotate slowly, as the massive channels
    of real keys do, and each pair shares its energy between its two channels (the post-RoPE pair structure);
  * token outliers: ~1% of tokens scaled x3;
  * a sink token 0 whose key is ``sink_scale`` (8) times the typical key norm along a random direction
    orthogonal to the mean query, plus a calibrated component along the mean query (see Queries).
Values: per-channel means N(0, 0.5^2) plus Gaussian noise with per-channel std ~ LogNormal(0, 0.3), normalized to global std ``v_std``
  (0.05 = the small-magnitude V real models have, 0.5 = a larger one), 1% token outliers x4.
Queries (GQA, ``num_q_heads`` = r * H): pre-RoPE q = mu_q + noise where mu_q shares the key's outlier-channel
  direction, then RoPE; scaled so the logits q.k/sqrt(D) have std ``logit_std`` (2). The sink key's component
  along the mean query direction is calibrated so token 0 draws ``sink_mass`` (0.35) of the attention on
  average (SmolLM2's layers range 0.001-0.57, median ~0.4; its V rows have channel means of ~0.4 x their norm,
  as the synthetic V has).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class KVSample:
    """One layer's attention inputs: q [T, Hq, D], k and v [T, Hkv, D] (post-RoPE), fp32."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    name: str


def rope(x: torch.Tensor, theta: float = 1e5, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Apply RoPE (HF rotate_half convention) to x [T, H, D] at positions 0..T-1 (or ``positions`` [T]).

    y[:, :, i] = x_i cos(p w_i) - x_{i+D/2} sin(p w_i);  y[:, :, i+D/2] = x_{i+D/2} cos(p w_i) + x_i sin(p w_i),
    w_i = theta^(-2i/D), i < D/2.
    """
    t, _, d = x.shape
    half = d // 2
    pos = torch.arange(t, dtype=torch.float64) if positions is None else positions.double()
    inv = theta ** (-torch.arange(half, dtype=torch.float64) * 2.0 / d)
    ang = pos[:, None] * inv[None, :]  # [T, D/2]
    cos = ang.cos().float()[:, None, :]
    sin = ang.sin().float()[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def synthetic_kv(
    seq_len: int = 1024,
    num_kv_heads: int = 4,
    head_dim: int = 128,
    num_q_heads: int | None = None,
    v_std: float = 0.05,
    seed: int = 0,
    theta: float = 1e5,
    outlier_pairs: int = 2,
    sink_scale: float = 8.0,
    sink_mass: float = 0.35,
    logit_std: float = 2.0,
) -> KVSample:
    """Generate one layer of structured post-RoPE K, V and Q (see module doc). Deterministic in ``seed``."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
    hq = num_q_heads or 4 * num_kv_heads
    if hq % num_kv_heads:
        raise ValueError(f"num_q_heads ({hq}) must be a multiple of num_kv_heads ({num_kv_heads})")
    g = torch.Generator().manual_seed(seed)
    t, h, d = seq_len, num_kv_heads, head_dim
    half = d // 2

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    # ---- keys (pre-RoPE) --------------------------------------------------------------------------------
    mu = 0.7 * randn(h, d)
    sigma = torch.exp(0.4 * randn(h, d))
    boost = torch.ones(h, d)
    for hh in range(h):
        pairs = half // 2 + torch.randperm(half - half // 2, generator=g)[:outlier_pairs]  # low-frequency half
        amp = 6.0 + 4.0 * torch.rand(outlier_pairs, generator=g)
        boost[hh, pairs] = amp
        boost[hh, pairs + half] = amp
    k_pre = (mu * boost)[None] + (sigma * boost)[None] * randn(t, h, d)
    tok_out = torch.rand(t, generator=g) < 0.01
    k_pre[tok_out] *= 3.0

    # ---- queries (pre-RoPE), sharing the keys' outlier direction ----------------------------------------
    r = hq // h
    mu_q = (mu * boost).repeat_interleave(r, dim=0) * (0.5 + torch.rand(hq, 1, generator=g))
    q_pre = mu_q[None] + randn(t, hq, d) * sigma.repeat_interleave(r, dim=0)[None]

    # sink: token 0's key is sink_scale x the typical key norm along a random direction (a large token
    # in the first tile) plus c x the mean query direction, c calibrated so the sink draws ``sink_mass``
    k = rope(k_pre, theta)
    q = rope(q_pre, theta)
    key_norm = k[1:].norm(dim=-1).mean(0)  # [H]
    w = randn(h, d)
    qdir = q.mean(0).reshape(h, r, d).mean(1)
    qdir = qdir / qdir.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    w = w - (w * qdir).sum(-1, keepdim=True) * qdir
    w = w / w.norm(dim=-1, keepdim=True)
    # scale queries so logits q.k/sqrt(D) (sink excluded) have std ``logit_std``
    qg = q.reshape(t, h, r, d)
    logits = torch.einsum("tgrd,sgd->tgrs", qg[-64:], k[1:]) / math.sqrt(d)
    q = q * (logit_std / logits.std().clamp_min(1e-6))
    qg = q.reshape(t, h, r, d)
    s_rest = torch.einsum("tgrd,sgd->tgrs", qg, k[1:]) / math.sqrt(d)  # [T, H, r, T-1]
    causal = torch.ones(t, t - 1, dtype=torch.bool).tril(-1)  # query t sees keys 1..t
    lse = torch.logsumexp(s_rest.masked_fill(~causal[:, None, None, :], float("-inf")), dim=-1)  # [T, H, r]
    base = sink_scale * key_norm[:, None] * w  # [H, D]
    a_base = torch.einsum("tgrd,gd->tgr", qg, base) / math.sqrt(d)
    a_dir = torch.einsum("tgrd,gd->tgr", qg, qdir) / math.sqrt(d)

    def mass(c: float) -> float:
        return float(torch.sigmoid(a_base + c * a_dir - lse)[1:].mean())

    lo_c, hi_c = -50.0 * float(key_norm.max()), 50.0 * float(key_norm.max())
    for _ in range(60):  # mass(c) is increasing in c (a_dir > 0 on average): bisection
        mid = 0.5 * (lo_c + hi_c)
        lo_c, hi_c = (mid, hi_c) if mass(mid) < sink_mass else (lo_c, mid)
    k[0] = base + 0.5 * (lo_c + hi_c) * qdir  # RoPE is the identity at position 0

    # ---- values --------------------------------------------------------------------------------------------
    v = 0.5 * randn(h, d)[None] + randn(t, h, d) * torch.exp(0.3 * randn(h, d))[None]
    v_out = torch.rand(t, generator=g) < 0.01
    v[v_out] *= 4.0
    v = v * (v_std / v.std())
    name = f"synthetic(D={d},H={h},Hq={hq},T={t},v_std={v_std},seed={seed})"
    return KVSample(q=q.float(), k=k.float(), v=v.float(), name=name)
