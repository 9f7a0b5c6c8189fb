"""Fidelity metrics of a quantized KV cache against the exact one.

Shapes: q [T, Hq, D]; k, v, k_hat, v_hat [T, Hkv, D]; GQA with r = Hq / Hkv query heads per KV head
(query head j reads KV head j // r, vLLM/HF order). Attention is causal with scale 1/sqrt(D):
P = softmax(q k^T / sqrt(D) + causal mask), O = P v.

* ``nmse_k`` = ||K_hat - K||^2 / ||K||^2 (sums over every element), same for ``nmse_v``.
* ``attn_score_cosine`` = mean over (query, q-head) of cos(P_row, P_hat_row): the cosine between the exact
  and the quantized attention-probability rows (causal prefix).
* ``attn_output_rel_err`` = ||O_hat - O||_F / ||O||_F over all queries and q-heads.
* ``worst5_vector_err`` = mean of the largest 5% of the per-(query, q-head) errors ||o_hat - o|| / ||o||.
"""

from __future__ import annotations

import math

import torch

METRIC_KEYS = ("nmse_k", "nmse_v", "attn_score_cosine", "attn_output_rel_err", "worst5_vector_err")


def nmse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    x = x.double()
    return float((x_hat.double() - x).pow(2).sum() / x.pow(2).sum().clamp_min(1e-30))


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities [r, T, T] and outputs [r, T, D] of the q-heads that read KV head ``kv_head``."""
    t, hq, d = q.shape
    r = hq // k.shape[1]
    qh = q[:, kv_head * r:(kv_head + 1) * r].transpose(0, 1).float()  # [r, T, D]
    s = qh @ k[:, kv_head].float().T / math.sqrt(d)  # [r, T, T]
    mask = torch.ones(t, t, dtype=torch.bool).triu(1)
    p = torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1)
    return p, p @ v[:, kv_head].float()


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(P [r, T, T], O [r, T, D]) per KV head: the reference for :func:`attention_metrics` (compute once)."""
    return [causal_attention(q, k, v, h) for h in range(k.shape[1])]


def attention_metrics(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_hat: torch.Tensor,
                      v_hat: torch.Tensor, exact: list | None = None) -> dict[str, float]:
    """All of :data:`METRIC_KEYS` for one layer (see module doc). ``exact``: :func:`exact_attention` output."""
    if k.shape != k_hat.shape or v.shape != v_hat.shape or q.shape[0] != k.shape[0]:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, k_hat {tuple(k_hat.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"Hq={q.shape[1]} is not a multiple of Hkv={k.shape[1]}")
    cos_sum, n_rows = 0.0, 0
    err_sq, ref_sq = 0.0, 0.0
    vec_errs = []
    for h in range(k.shape[1]):
        p, o = exact[h] if exact is not None else causal_attention(q, k, v, h)
        p_hat, o_hat = causal_attention(q, k_hat, v_hat, h)
        cos = torch.nn.functional.cosine_similarity(p, p_hat, dim=-1)  # [r, T]
        cos_sum += float(cos.double().sum())
        n_rows += cos.numel()
        diff = (o_hat - o).double()
        err_sq += float(diff.pow(2).sum())
        ref_sq += float(o.double().pow(2).sum())
        vec_errs.append((diff.norm(dim=-1) / o.double().norm(dim=-1).clamp_min(1e-30)).flatten())
    errs = torch.cat(vec_errs)
    n_worst = max(1, int(math.ceil(0.05 * errs.numel())))
    return {
        "nmse_k": nmse(k, k_hat),
        "nmse_v": nmse(v, v_hat),
        "attn_score_cosine": cos_sum / n_rows,
        "attn_output_rel_err": math.sqrt(err_sq / max(ref_sq, 1e-30)),
        "worst5_vector_err": float(errs.topk(n_worst).values.mean()),
    }
