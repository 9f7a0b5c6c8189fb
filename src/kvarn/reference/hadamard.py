"""Normalized Sylvester Hadamard rotation (method.md §1.2).

H_D = Sylvester Hadamard of order D divided by sqrt(D): orthonormal and symmetric, so H @ H = I.
Rows of K and V ([..., D]) are rotated as ``x @ H``; attention runs in the rotated frame because
(q H)(k H)^T = q k^T, and the output is un-rotated as ``o_rot @ H``.
"""

from __future__ import annotations

import functools
import math

import torch


@functools.lru_cache(maxsize=None)
def _sylvester(d: int) -> torch.Tensor:
    if d < 1 or d & (d - 1):
        raise ValueError(f"Hadamard order must be a power of two, got {d}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(d)


def hadamard_matrix(d: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """[d, d] normalized Sylvester Hadamard matrix (no random signs, no permutation)."""
    return _cached(d, dtype, torch.device(device) if device is not None else torch.device("cpu")).clone()


@functools.lru_cache(maxsize=64)
def _cached(d: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return _sylvester(d).to(dtype=dtype, device=device)


def rotate(x: torch.Tensor) -> torch.Tensor:
    """x [..., D] -> x @ H_D as fp32 (also the inverse, since H is an involution).

    Computed in float64 and rounded once to fp32, so a row's result does not depend on how many rows
    are rotated together (an fp32 matmul's rounding can depend on its shape; see gqa_attention)."""
    dev = x.device
    return (x.double() @ _cached(x.shape[-1], torch.float64, dev)).float()
