"""Tile records: encode rotated K/V tiles to the uint8 record of kvarn.config and back.

A tile is one (block, KV head): G tokens x D channels of K and of V, already rotated (x @ H).
K is balanced and quantized as a [D, G] tile (rows = channels: per-channel step/zero, per-token
column scale); V as a [G, D] tile (rows = tokens: per-token step/zero, per-channel column scale).
Scales are folded (method.md §1.4) and stored as fp16::

    K_hat[d, g] = (q * k_row_scale[d] + k_row_zero[d]) * k_col_scale[g]
    V_hat[g, d] = (q * v_row_scale[g] + v_row_zero[g]) * v_col_scale[d]

The dequantized values are computed from the stored fp16 scales, so encode -> decode is exactly
what any reader of the cache sees.

Code bytes are stored in the order the decode kernel feeds its tensor cores (the reduction axis of each
product contiguous, kvarn.config's record layout): K bytes [G/PK, D], byte (j, d) holding the codes of
channel d for tokens p*(G/PK) + j in bits [p*kb, (p+1)*kb) (PK = 8/kb token planes, each a contiguous
token range); V bytes [D/PV, G], byte (e, n) holding the codes of token n for channels PV*e + p.
"""

from __future__ import annotations

import torch

from kvarn.config import KvarnConfig
from kvarn.reference.balance import balance
from kvarn.reference.hadamard import rotate
from kvarn.reference.quant import pack_codes, rtn, unpack_codes


def _pack_k(kq: torch.Tensor, bits: int) -> torch.Tensor:
    """K codes [N, D, G] -> stored bytes [N, G*bits/8, D] (token planes: byte j holds tokens p*(G/P) + j)."""
    n, d, g = kq.shape
    per = 8 // bits
    planes = kq.reshape(n, d, per, g // per).transpose(2, 3).reshape(n, d, g)  # position j*P + p
    return pack_codes(planes, bits).transpose(1, 2).contiguous()


def _unpack_k(kb: torch.Tensor, bits: int) -> torch.Tensor:
    """Stored K bytes [N, G/P, D] -> codes [N, D, G] (inverse of :func:`_pack_k`)."""
    n, gp, d = kb.shape
    per = 8 // bits
    pos = unpack_codes(kb.transpose(1, 2), bits)  # [N, D, G], position j*P + p
    return pos.reshape(n, d, gp, per).transpose(2, 3).reshape(n, d, gp * per)


def _pack_v(vq: torch.Tensor, bits: int) -> torch.Tensor:
    """V codes [N, G, D] -> stored bytes [N, D*bits/8, G] (byte e of token n: channels P*e + p)."""
    return pack_codes(vq, bits).transpose(1, 2).contiguous()


def _unpack_v(vb: torch.Tensor, bits: int) -> torch.Tensor:
    """Stored V bytes [N, D/P, G] -> codes [N, G, D] (inverse of :func:`_pack_v`)."""
    return unpack_codes(vb.transpose(1, 2), bits)


def _check_finite(name: str, x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{name} contains {bad} non-finite values (inf/NaN); kvarn refuses to encode them")


def _quantize_tile(m: torch.Tensor, bits: int, cfg: KvarnConfig):
    """m [N, R, C] -> (codes [N, R, C], row_scale fp16 [N, R], row_zero fp16 [N, R], col_scale fp16 [N, C])."""
    balanced, col, row = balance(m, cfg.numerics)
    codes, step, lo = rtn(balanced, bits, cfg.numerics.clip_ratios_for(bits))
    return codes, (row * step).half(), (row * lo).half(), col.half()


def encode_tiles(k_rot: torch.Tensor, v_rot: torch.Tensor, cfg: KvarnConfig) -> torch.Tensor:
    """k_rot, v_rot [N, G, D] (rotated, any float dtype) -> records uint8 [N, cfg.record_bytes].

    Raises ValueError on wrong shapes or non-finite input.
    """
    g, d = cfg.group, cfg.head_dim
    if k_rot.dim() != 3 or k_rot.shape[1:] != (g, d) or v_rot.shape != k_rot.shape:
        raise ValueError(
            f"encode_tiles expects k_rot and v_rot of shape [N, {g}, {d}], got {tuple(k_rot.shape)} and {tuple(v_rot.shape)}"
        )
    _check_finite("K", k_rot)
    _check_finite("V", v_rot)
    n = k_rot.shape[0]
    kq, k_rs, k_rz, k_cs = _quantize_tile(k_rot.float().transpose(1, 2), cfg.key_bits, cfg)
    vq, v_rs, v_rz, v_cs = _quantize_tile(v_rot.float(), cfg.value_bits, cfg)
    parts = {
        "k_codes": _pack_k(kq, cfg.key_bits).reshape(n, -1),
        "k_row_scale": k_rs.view(torch.uint8).reshape(n, -1),
        "k_row_zero": k_rz.view(torch.uint8).reshape(n, -1),
        "k_col_scale": k_cs.view(torch.uint8).reshape(n, -1),
        "v_codes": _pack_v(vq, cfg.value_bits).reshape(n, -1),
        "v_col_scale": v_cs.view(torch.uint8).reshape(n, -1),
        "v_row_scale": v_rs.view(torch.uint8).reshape(n, -1),
        "v_row_zero": v_rz.view(torch.uint8).reshape(n, -1),
    }
    out = torch.zeros(n, cfg.record_bytes, dtype=torch.uint8, device=k_rot.device)
    for name, (start, length) in cfg.offsets.items():
        out[:, start : start + length] = parts[name]
    return out


def record_fields(records: torch.Tensor, cfg: KvarnConfig) -> dict[str, torch.Tensor]:
    """Typed views of records uint8 [N, R]: packed codes (uint8) and fp16 scale vectors.

    Keys: k_codes [N, G*kb/8, D], k_row_scale [N, D], k_row_zero [N, D], k_col_scale [N, G],
    v_codes [N, D*vb/8, G], v_col_scale [N, D], v_row_scale [N, G], v_row_zero [N, G] (code bytes
    as stored, see the module docstring).
    """
    if records.dim() != 2 or records.shape[1] != cfg.record_bytes or records.dtype != torch.uint8:
        raise ValueError(
            f"records must be uint8 [N, {cfg.record_bytes}], got {records.dtype} {tuple(records.shape)}"
        )
    n, d, g = records.shape[0], cfg.head_dim, cfg.group
    out = {}
    for name, (start, length) in cfg.offsets.items():
        raw = records[:, start : start + length]
        if name == "k_codes":
            out[name] = raw.reshape(n, -1, d)
        elif name == "v_codes":
            out[name] = raw.reshape(n, -1, g)
        else:
            out[name] = raw.contiguous().view(torch.float16)
    return out


def decode_tiles(records: torch.Tensor, cfg: KvarnConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """records uint8 [N, R] -> (k_rot [N, G, D], v_rot [N, G, D]) fp32, in the rotated frame."""
    f = record_fields(records, cfg)
    kq = _unpack_k(f["k_codes"], cfg.key_bits).float()  # [N, D, G]
    k = (kq * f["k_row_scale"].float()[..., None] + f["k_row_zero"].float()[..., None]) * f[
        "k_col_scale"
    ].float()[:, None, :]
    vq = _unpack_v(f["v_codes"], cfg.value_bits).float()  # [N, G, D]
    v = (vq * f["v_row_scale"].float()[..., None] + f["v_row_zero"].float()[..., None]) * f[
        "v_col_scale"
    ].float()[:, None, :]
    return k.transpose(1, 2).contiguous(), v


def roundtrip(
    k: torch.Tensor, v: torch.Tensor, cfg: KvarnConfig, keep_sink: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """What a kvarn cache returns for one sequence, in the original frame.

    k, v [T, H, D] (post-RoPE keys). Complete G-token tiles are rotated, encoded, decoded and
    rotated back; the first tile (``keep_sink``) and a ragged last partial tile stay as fp16.
    Returns fp32 tensors of the same shape.
    """
    if k.dim() != 3 or v.shape != k.shape or k.shape[-1] != cfg.head_dim:
        raise ValueError(f"roundtrip expects k, v [T, H, {cfg.head_dim}], got {tuple(k.shape)}, {tuple(v.shape)}")
    t, h, d = k.shape
    g = cfg.group
    k_out = k.half().float()
    v_out = v.half().float()
    first = 1 if keep_sink else 0
    n_full = t // g
    if n_full > first:
        sl = slice(first * g, n_full * g)
        # [T', H, D] -> tiles [n*H, G, D]
        def tiles(x):
            return rotate(x[sl]).reshape(n_full - first, g, h, d).transpose(1, 2).reshape(-1, g, d)

        kh, vh = decode_tiles(encode_tiles(tiles(k), tiles(v), cfg), cfg)

        def untile(x):
            return rotate(x.reshape(n_full - first, h, g, d).transpose(1, 2).reshape(-1, h, d))

        k_out[sl] = untile(kh)
        v_out[sl] = untile(vh)
    return k_out, v_out
