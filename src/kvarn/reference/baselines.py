"""Fake-quantization baselines kvarn is compared against, each at its own byte budget.

All functions take one sequence's K and V, ``[T, H, D]`` (post-RoPE keys), and return what a reader of that
cache would see, fp32, same shape, in the original frame. Pure PyTorch (no vllm import).

``int4_per_token_head`` -- vLLM's ``--kv-cache-dtype int4_per_token_head`` (vllm/v1/attention/ops/
    int4_per_token_head.py), reproduced: each token's K and V head vector x [D] is pre-rotated with vLLM's
    randomized Hadamard transform y = H_D (s * x) (unnormalized Sylvester H_D, fixed +-1 signs s from a
    seeded generator) and cast to the model dtype; then asymmetric 4-bit RTN over the D entries with ONE
    fp32 scale per (token, head): step = max((max - min)/15, 1e-6), integer zero point z = clamp(round(-min/step),
    0, 15) hidden in the 4 low mantissa bits of the fp32 scale (so the usable step is the scale with those bits
    cleared), q = clamp(round(y/step + z), 0, 15), y_hat = (q - z) * step; x_hat = s * (H_D y_hat) / D.
    Bytes per token per head: D/2 (K) + D/2 (V) + 4 + 4 = D + 8 (136 at D=128: 26% more than kvarn k4v2_g128).
    Checked on an H200 against vLLM 0.32's Triton write kernel (``_reshape_cache_int4_kernel``, copied): same scale
    bits everywhere, same codes for 99.7% of (token, head) vectors; the rest differ by one zero-point step at exact
    .5 ties (Triton's approximate fp32 division), K/V NMSE equal to 5 digits.
``kivi2`` -- KIVI-style 2-bit, no rotation: K asymmetric per channel over G-token groups (fp16 step and min per
    channel per group), V asymmetric per token over the D channels (fp16 step and min per token). The fp16
    sink/tail policy matches kvarn: the first G tokens (``keep_sink``) and the ragged last partial group stay
    fp16. Bytes per token per head: D/4 + D/4 + 4*D/G + 4 (72 at D=128, G=128; kvarn k2v2_g128 stores 76).
``fp8_e4m3`` -- one fp32 scale per tensor (K and V separately, amax/448 of the given tensor; a calibrated
    per-tensor scale, the best case of vLLM's ``fp8`` cache), values stored as float8_e4m3fn.
    Bytes per token per head: 2*D (scales amortized to 0).
"""

from __future__ import annotations

import torch

BASELINES = ("int4_per_token_head", "kivi2", "fp8_e4m3")
_FP8_MAX = 448.0
_RHT_SEED = 0x9E3779B9  # vLLM _get_rht_signs(d, round_idx=0)


def _check_name(name: str) -> None:
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")


def baseline_bytes_per_token(name: str, head_dim: int, group: int = 128) -> float:
    """Bytes per token per KV head (K + V + scales) of baseline ``name`` at ``head_dim``."""
    _check_name(name)
    d = head_dim
    if name == "int4_per_token_head":
        return d // 2 + d // 2 + 4 + 4
    if name == "kivi2":
        return d / 4 + d / 4 + 2 * 2 * d / group + 2 * 2
    return 2.0 * d  # fp8_e4m3


def baseline_bits_per_element(name: str, head_dim: int, group: int = 128) -> float:
    return 8.0 * baseline_bytes_per_token(name, head_dim, group) / (2 * head_dim)


def fake_quant(
    name: str,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    group: int = 128,
    keep_sink: bool = True,
    model_dtype: torch.dtype = torch.bfloat16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v [T, H, D] -> (k_hat, v_hat) fp32 [T, H, D] as baseline ``name`` stores and returns them.

    group / keep_sink apply to ``kivi2`` only; model_dtype (the dtype vLLM rotates in) to ``int4_per_token_head``.
    """
    _check_name(name)
    if k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"fake_quant expects k, v [T, H, D] of equal shape, got {tuple(k.shape)}, {tuple(v.shape)}")
    for nm, x in (("k", k), ("v", v)):
        if not torch.isfinite(x).all():
            raise ValueError(f"{nm} contains non-finite values (inf/NaN)")
    if name == "int4_per_token_head":
        return _int4_per_token_head(k, model_dtype), _int4_per_token_head(v, model_dtype)
    if name == "kivi2":
        return _kivi2(k, v, group, keep_sink)
    return _fp8_per_tensor(k), _fp8_per_tensor(v)


# ---- vLLM int4_per_token_head -----------------------------------------------------------------------------
def rht_signs(d: int) -> torch.Tensor:
    """vLLM's deterministic +-1 RHT signs for dimension d (same generator, seed and draw)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(_RHT_SEED)
    return 2.0 * torch.bernoulli(torch.full((d,), 0.5), generator=gen) - 1.0


def _walsh_hadamard(x: torch.Tensor) -> torch.Tensor:
    """Unnormalized Walsh-Hadamard transform along the last dim (power of two): H_d x, H_d H_d = d I."""
    d = x.shape[-1]
    if d & (d - 1):
        raise ValueError(f"Hadamard transform needs a power-of-two last dim, got {d}")
    h = 1
    while h < d:
        xv = x.reshape(*x.shape[:-1], d // (2 * h), 2, h)
        x = torch.stack([xv[..., 0, :] + xv[..., 1, :], xv[..., 0, :] - xv[..., 1, :]], dim=-2).reshape(x.shape)
        h <<= 1
    return x


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, torch.floor(x + 0.5), torch.ceil(x - 0.5))


def _int4_per_token_head(x: torch.Tensor, model_dtype: torch.dtype) -> torch.Tensor:
    d = x.shape[-1]
    s = rht_signs(d).to(x.device)
    y = _walsh_hadamard(x.float() * s).to(model_dtype).float()  # vLLM casts the rotated K/V to the model dtype
    lo = y.amin(-1, keepdim=True)
    hi = y.amax(-1, keepdim=True)
    step = torch.clamp((hi - lo) / 15.0, min=1e-6)
    zp = torch.clamp(_round_half_away(-lo / step), 0.0, 15.0)
    q = torch.clamp(_round_half_away(y * (1.0 / step) + zp), 0.0, 15.0)  # the kernel multiplies by 1/step
    # the zero point replaces the 4 low mantissa bits of the fp32 scale; the reader uses the truncated scale
    step_read = (step.view(torch.int32) & -16).view(torch.float32)
    y_hat = (q - zp) * step_read
    return _walsh_hadamard(y_hat) * s / d


# ---- KIVI-style 2-bit -------------------------------------------------------------------------------------
def _rtn_asym(x: torch.Tensor, dim: int, bits: int) -> torch.Tensor:
    """Asymmetric RTN along ``dim`` with fp16 step and min (what a KIVI cache stores), dequantized."""
    lo = x.amin(dim, keepdim=True)
    hi = x.amax(dim, keepdim=True)
    step = torch.clamp((hi - lo) / (2**bits - 1), min=1e-10).half().float()
    lo = lo.half().float()
    q = torch.clamp(torch.round((x - lo) / step), 0, 2**bits - 1)
    return q * step + lo


def _kivi2(k: torch.Tensor, v: torch.Tensor, group: int, keep_sink: bool) -> tuple[torch.Tensor, torch.Tensor]:
    t, h, d = k.shape
    k_out, v_out = k.half().float(), v.half().float()
    first = 1 if keep_sink else 0
    n_full = t // group
    if n_full > first:
        sl = slice(first * group, n_full * group)
        kt = k_out[sl].reshape(n_full - first, group, h, d)
        k_out[sl] = _rtn_asym(kt, dim=1, bits=2).reshape(-1, h, d)  # per channel over the group's tokens
        v_out[sl] = _rtn_asym(v_out[sl], dim=-1, bits=2)  # per token over the channels
    return k_out, v_out


# ---- fp8 e4m3 per tensor ----------------------------------------------------------------------------------
def _fp8_per_tensor(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    scale = torch.clamp(x.abs().amax() / _FP8_MAX, min=1e-12)
    return (x / scale).to(torch.float8_e4m3fn).float() * scale
