"""Codec: lossless steps bit-exact, lossy steps within stated bounds, bad input rejected."""

import pytest
import torch

from kvarn.config import NUMERICS, PRESETS, KvarnConfig
from kvarn.reference import (
    balance,
    decode_tiles,
    encode_tiles,
    hadamard_matrix,
    imbalance,
    pack_codes,
    record_fields,
    roundtrip,
    rtn,
    unpack_codes,
)

ALL = [(p, d) for p in sorted(PRESETS) for d in (64, 128, 256)]


def nmse(a, b):
    return ((a - b).pow(2).sum() / b.pow(2).sum().clamp_min(1e-30)).item()


@pytest.mark.parametrize("d", [1, 2, 64, 128, 256])
def test_hadamard_is_orthonormal_involution(d):
    h = hadamard_matrix(d, torch.float64)
    assert torch.allclose(h @ h, torch.eye(d, dtype=torch.float64), atol=1e-12)
    assert torch.equal(h, h.T)
    with pytest.raises(ValueError):
        hadamard_matrix(96)


@pytest.mark.parametrize("bits", [2, 4])
def test_pack_unpack_bit_exact_lsb_first(bits):
    codes = torch.randint(0, 1 << bits, (3, 5, 128), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.shape == (3, 5, 128 * bits // 8)
    assert torch.equal(unpack_codes(packed, bits), codes)
    # LSB-first: code 0 sits in the low bits of byte 0
    one = torch.zeros(1, 8, dtype=torch.uint8)
    one[0, 1] = 1
    assert pack_codes(one, bits)[0, 0].item() == 1 << bits


@pytest.mark.parametrize("preset,d", ALL)
def test_record_layout_bit_exact(preset, d):
    """Records re-encode bit-exactly from their own fields, and every field sits at its offset."""
    cfg = KvarnConfig.from_name(preset, d)
    g = cfg.group
    k = torch.randn(3, g, d) * 3
    v = torch.randn(3, g, d) * 0.2
    rec = encode_tiles(k, v, cfg)
    assert rec.shape == (3, cfg.record_bytes) and rec.dtype == torch.uint8
    f = record_fields(rec, cfg)
    rebuilt = torch.zeros_like(rec)
    for name, (start, length) in cfg.offsets.items():
        x = f[name]
        rebuilt[:, start : start + length] = (x if x.dtype == torch.uint8 else x.view(torch.uint8)).reshape(3, -1)
    assert torch.equal(rebuilt, rec)
    assert f["k_codes"].shape == (3, g * cfg.key_bits // 8, d)
    assert f["v_codes"].shape == (3, d * cfg.value_bits // 8, g)
    assert (rec[:, cfg.raw_record_bytes :] == 0).all()
    # decode is deterministic and encode is deterministic
    assert torch.equal(encode_tiles(k, v, cfg), rec)


# Stated NMSE bounds (rotated frame, Gaussian tiles, D up to 256): (numerics, bits) -> bound.
BOUNDS = {("reference", 4): 0.02, ("reference", 2): 0.36, ("improved", 4): 0.02, ("improved", 2): 0.15}


@pytest.mark.parametrize("preset,d", ALL)
@pytest.mark.parametrize("numerics", sorted(NUMERICS))
def test_roundtrip_error_bounds_random(preset, d, numerics):
    cfg = KvarnConfig.from_name(preset, d, numerics=numerics)
    k = torch.randn(4, cfg.group, d) * 2
    v = torch.randn(4, cfg.group, d) * 0.05
    kh, vh = decode_tiles(encode_tiles(k, v, cfg), cfg)
    assert nmse(kh, k) < BOUNDS[numerics, cfg.key_bits]
    assert nmse(vh, v) < BOUNDS[numerics, cfg.value_bits]


def test_improved_numerics_beat_reference_on_small_v():
    """Flaw 1/2 fix: V at std 0.05 (where the -0.3 clamp binds) quantizes better at 2 bits."""
    torch.manual_seed(1)
    v = torch.randn(16, 128, 128) * 0.05
    v[:, :, 5] *= 8
    errs = {}
    for num in NUMERICS:
        cfg = KvarnConfig.from_name("k4v2_g128", numerics=num)
        _, vh = decode_tiles(encode_tiles(v, v, cfg), cfg)
        errs[num] = nmse(vh, v)
    assert errs["improved"] < 0.8 * errs["reference"], errs


@pytest.mark.parametrize("numerics", sorted(NUMERICS))
def test_adversarial_tiles(numerics):
    cfg = KvarnConfig.from_name("k4v2_g128", numerics=numerics)
    g, d = cfg.group, cfg.head_dim
    zero = torch.zeros(1, g, d)
    const = torch.full((1, g, d), 3.25)
    outlier = torch.randn(1, g, d)
    outlier[0, 7, 11] = 1e4
    tiny = torch.randn(1, g, d) * 1e-4
    kh, vh = decode_tiles(encode_tiles(zero, zero, cfg), cfg)
    assert torch.equal(kh, zero) and torch.equal(vh, zero)
    kh, vh = decode_tiles(encode_tiles(const, const, cfg), cfg)
    assert torch.allclose(kh, const, rtol=2e-3) and torch.allclose(vh, const, rtol=2e-3)
    kh, vh = decode_tiles(encode_tiles(outlier, outlier, cfg), cfg)
    assert torch.isfinite(kh).all() and torch.isfinite(vh).all()
    assert abs(kh[0, 7, 11].item() - 1e4) / 1e4 < 0.05  # the outlier itself survives
    assert nmse(kh, outlier) < 0.02
    kh, vh = decode_tiles(encode_tiles(tiny, tiny, cfg), cfg)
    assert nmse(kh, tiny) < 0.05 and nmse(vh, tiny) < 0.5


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_rejected(bad):
    cfg = KvarnConfig()
    k = torch.randn(2, cfg.group, cfg.head_dim)
    k[1, 3, 4] = bad
    with pytest.raises(ValueError, match="non-finite"):
        encode_tiles(k, torch.randn_like(k), cfg)
    with pytest.raises(ValueError, match=r"\[N, 128, 128\]"):
        encode_tiles(torch.randn(2, 64, 128), torch.randn(2, 64, 128), cfg)


def test_balance_reduces_imbalance_and_is_exact_factorization():
    cfg = KvarnConfig(numerics=NUMERICS["reference"])
    m = torch.randn(8, 128, 128) * 2
    m[:, 3] *= 9  # row outlier
    m[:, :, 0] *= 7  # column outlier
    bal, col, row = balance(m, cfg.numerics)
    assert (imbalance(bal) < imbalance(m)).all()
    assert torch.allclose(bal * col[:, None, :] * row[:, :, None], m, rtol=1e-4, atol=1e-5)
    assert (col >= torch.exp(torch.tensor(-0.3)) - 1e-6).all()


def test_rtn_clip_search_never_worse_per_row():
    x = torch.randn(4, 16, 128)
    q1, s1, l1 = rtn(x, 2)
    q2, s2, l2 = rtn(x, 2, NUMERICS["improved"].clip_ratios)
    e1 = (q1.float() * s1[..., None] + l1[..., None] - x).pow(2).sum(-1)
    e2 = (q2.float() * s2[..., None] + l2[..., None] - x).pow(2).sum(-1)
    assert (e2 <= e1 + 1e-6).all() and e2.sum() < e1.sum()


@pytest.mark.parametrize("t", [1, 127, 128, 300, 512])
def test_roundtrip_keeps_sink_and_tail_exact(t):
    cfg = KvarnConfig()
    k = torch.randn(t, 2, 128)
    v = torch.randn(t, 2, 128)
    kh, vh = roundtrip(k, v, cfg, keep_sink=True)
    exact_until = min(t, 128)
    tail_from = (t // 128) * 128
    assert torch.equal(kh[:exact_until], k[:exact_until].half().float())
    assert torch.equal(vh[tail_from:], v[tail_from:].half().float())
    if t >= 256:
        assert not torch.equal(kh[128:256], k[128:256].half().float())
        assert nmse(kh, k) < 0.02


@pytest.mark.parametrize("preset,d", ALL)
def test_code_bytes_sit_where_the_decode_kernel_reads_them(preset, d):
    """The stored code order (kvarn.config): K byte (j, d) = channel d of tokens p*(G/PK) + j at bits p*kb;
    V byte (e, n) = token n of channels PV*e + p at bits p*vb. Checked bit-exactly on random codes."""
    from kvarn.reference.codec import _pack_k, _pack_v, _unpack_k, _unpack_v

    cfg = KvarnConfig.from_name(preset, d)
    g, kb, vb = cfg.group, cfg.key_bits, cfg.value_bits
    kq = torch.randint(0, 1 << kb, (2, d, g), dtype=torch.uint8)
    vq = torch.randint(0, 1 << vb, (2, g, d), dtype=torch.uint8)
    kbytes, vbytes = _pack_k(kq, kb), _pack_v(vq, vb)
    assert kbytes.shape == (2, g * kb // 8, d) and vbytes.shape == (2, d * vb // 8, g)
    pk, pv = 8 // kb, 8 // vb
    for n, c in [(0, 0), (g - 1, d - 1), (g // pk, 1), (g // pk - 1, d // 2), (g - 2, 3)]:
        p, j = divmod(n, g // pk)
        assert (kbytes[1, j, c].item() >> (p * kb)) & ((1 << kb) - 1) == kq[1, c, n].item()
        e, p = divmod(c, pv)
        assert (vbytes[1, e, n].item() >> (p * vb)) & ((1 << vb) - 1) == vq[1, n, c].item()
    assert torch.equal(_unpack_k(kbytes, kb), kq) and torch.equal(_unpack_v(vbytes, vb), vq)
