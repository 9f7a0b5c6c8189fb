"""Fake-quant baselines: byte budgets, vLLM int4_per_token_head format, KIVI-2 policy, fp8 per tensor."""

from __future__ import annotations

import pytest
import torch

from kvarn.config import KvarnConfig
from kvarn.reference.baselines import (
    BASELINES,
    _walsh_hadamard,
    baseline_bits_per_element,
    baseline_bytes_per_token,
    fake_quant,
    rht_signs,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _kv(t=300, h=2, d=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, h, d, generator=g), 0.05 * torch.randn(t, h, d, generator=g)


def test_bytes_per_token_table():
    assert baseline_bytes_per_token("int4_per_token_head", 128) == 136
    assert baseline_bytes_per_token("int4_per_token_head", 64) == 72
    assert baseline_bytes_per_token("kivi2", 128) == 72
    assert baseline_bytes_per_token("kivi2", 64) == 38
    assert baseline_bytes_per_token("fp8_e4m3", 128) == 256
    assert baseline_bits_per_element("fp8_e4m3", 64) == 8.0
    # the claims: int4_per_token_head stores 26% more than k4v2_g128; KIVI-2 ~ k2v2_g128
    k4v2 = KvarnConfig.from_name("k4v2_g128", head_dim=128).bytes_per_token
    assert round(136 / k4v2, 2) == 1.26
    assert KvarnConfig.from_name("k2v2_g128", head_dim=128).bytes_per_token == 76


def test_unknown_name_and_bad_input():
    k, v = _kv()
    with pytest.raises(ValueError, match="int4_per_token_head, kivi2, fp8_e4m3"):
        fake_quant("int3", k, v)
    with pytest.raises(ValueError, match="valid"):
        baseline_bytes_per_token("nvfp4", 128)
    with pytest.raises(ValueError, match="shape"):
        fake_quant("kivi2", k, v[:10])
    k[3, 0, 5] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        fake_quant("fp8_e4m3", k, v)


@pytest.mark.parametrize("name", BASELINES)
def test_shapes_dtype_and_error_order(name):
    k, v = _kv(d=64)
    kh, vh = fake_quant(name, k, v, keep_sink=False)
    assert kh.shape == k.shape and vh.shape == v.shape and kh.dtype == torch.float32
    nmse = float(((kh - k) ** 2).sum() / (k**2).sum())
    bound = {"int4_per_token_head": 0.02, "kivi2": 0.3, "fp8_e4m3": 0.002}[name]
    assert 0 < nmse < bound


def test_walsh_hadamard_and_signs():
    x = torch.randn(7, 64)
    h = _walsh_hadamard(torch.eye(64))
    assert torch.allclose(h @ h.T, 64 * torch.eye(64))
    assert torch.allclose(_walsh_hadamard(_walsh_hadamard(x)) / 64, x, atol=1e-5)
    s = rht_signs(128)
    assert set(s.unique().tolist()) == {-1.0, 1.0} and torch.equal(s, rht_signs(128))


def test_int4_per_token_head_matches_vllm_rht():
    """Our RHT is vLLM's single_rht (same signs, same unnormalized transform), when vLLM is importable."""
    mod = pytest.importorskip("vllm.v1.attention.ops.int4_per_token_head")
    for d in (64, 128):
        x = torch.randn(5, 3, d)
        assert torch.equal(rht_signs(d), mod._get_rht_signs(d, 0, torch.device("cpu")))
        assert torch.allclose(mod.single_rht(x), _walsh_hadamard(x * rht_signs(d)), atol=1e-5)


def test_int4_per_token_head_format():
    """Per (token, head): y = RHT(x) in bf16; error in the rotated frame <= step/2 per element, one scale."""
    k, v = _kv(t=64, h=3, d=128)
    kh, _ = fake_quant("int4_per_token_head", k, v)
    s = rht_signs(128)
    y = _walsh_hadamard(k * s).bfloat16().float()
    y_hat = _walsh_hadamard(kh * s)  # H (s * x_hat) = y_hat exactly (up to fp32 rounding)
    step = (y.amax(-1) - y.amin(-1)) / 15
    err = (y_hat - y).abs().amax(-1)
    assert (err <= 0.5 * step * (1 + 1e-3) + 1e-4).all()
    # y_hat takes at most 16 distinct values per (token, head) on a uniform grid
    levels = (y_hat - y_hat.amin(-1, keepdim=True)) / step[..., None]
    assert torch.allclose(levels, levels.round(), atol=1e-2)
    assert (levels.round().amax(-1) <= 15).all()
    # the same token with a different model dtype differs only through the pre-quant cast
    kh32, _ = fake_quant("int4_per_token_head", k, v, model_dtype=torch.float32)
    assert float(((kh32 - k) ** 2).mean()) < 2 * float(((kh - k) ** 2).mean())


def test_kivi2_axes_and_sink_tail_policy():
    k, v = _kv(t=128 * 3 + 40, h=2, d=64)
    kh, vh = fake_quant("kivi2", k, v, group=128, keep_sink=True)
    # sink tile and ragged tail: fp16 round trip only
    for sl in (slice(0, 128), slice(384, None)):
        assert torch.equal(kh[sl], k[sl].half().float()) and torch.equal(vh[sl], v[sl].half().float())
    mid = slice(128, 384)
    # K: per channel over each 128-token group -> <= 4 levels per (group, head, channel)
    kg = kh[mid].reshape(2, 128, 2, 64)
    n_levels = torch.tensor([[[len(kg[g, :, h, c].unique()) for c in range(64)] for h in range(2)] for g in range(2)])
    assert n_levels.max() <= 4 and n_levels.min() >= 2
    # V: per token over its D channels -> <= 4 levels per (token, head)
    assert max(len(vh[t, h].unique()) for t in range(128, 384) for h in range(2)) <= 4
    # without the sink policy the first tile is quantized too
    kh2, _ = fake_quant("kivi2", k, v, keep_sink=False)
    assert not torch.equal(kh2[:128], k[:128].half().float())
    assert torch.equal(kh2[128:384], kh[128:384])


def test_kivi2_exact_on_representable_tiles():
    """A tile whose channels take exactly 4 equally spaced fp16-representable values is stored exactly."""
    t, h, d = 256, 1, 64
    base = torch.tensor([0.0, 0.5, 1.0, 1.5])
    k = base[torch.arange(t) % 4][:, None, None].expand(t, h, d).clone()
    v = base[torch.arange(d) % 4][None, None, :].expand(t, h, d).clone()
    kh, vh = fake_quant("kivi2", k, v, keep_sink=False)
    assert torch.equal(kh, k) and torch.equal(vh, v)


def test_fp8_per_tensor():
    k, v = _kv(d=64)
    kh, vh = fake_quant("fp8_e4m3", k, v)
    scale = k.abs().amax() / 448
    # e4m3 has 3 mantissa bits: relative error <= 2^-4 for values in the normal range
    normal = k.abs() > 2**-6 * scale
    rel = ((kh - k).abs() / k.abs())[normal]
    assert rel.max() <= 2**-4 + 1e-6
    assert torch.isclose(kh.abs().max(), k.abs().max())
    # per-tensor: scaling the input scales the output
    kh2, _ = fake_quant("fp8_e4m3", 4 * k, v)
    assert torch.allclose(kh2, 4 * kh)
