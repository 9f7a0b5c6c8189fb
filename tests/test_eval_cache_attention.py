"""kvarn.eval: formats and the cache-simulating attention (tiny random Llama, CPU, fast)."""

import pytest
import torch

from kvarn.eval.cache_attention import CacheSimulator, cache_attention, simulate_cache
from kvarn.eval.kv_formats import KVFormat, format_names, make_format, resolve_names

transformers = pytest.importorskip("transformers")


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=97, hidden_size=128, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024,
    )
    m = transformers.LlamaForCausalLM(cfg).eval()
    return m


def noisy_format(tile=16, sink=True, fp16_tail=True, scale=0.3):
    """A fake codec with a large, deterministic, position-local error: easy to see if misapplied."""

    def fn(k, v):
        return k + scale * torch.sin(7 * k), v - scale * torch.cos(5 * v)

    return KVFormat("noisy", 3.0, tile, sink, fp16_tail, fn)


def test_format_names_and_bits():
    names = format_names(128)
    assert names[0] == "bf16" and "kvarn_k4v2_g128@reference" in names and "kvarn_k4v2_g128@improved" in names
    assert {"fp8_e4m3", "int4_per_token_head", "kivi2"} <= set(names)
    assert len([n for n in names if n.startswith("kvarn_")]) == 10
    f = make_format("kvarn_k4v2_g128@improved", 128)
    assert f.bits_per_element == pytest.approx(3.375) and f.tile == 128 and f.sink and f.fp16_tail
    assert make_format("kvarn_k4v2_g128@reference", 64).bits_per_element == pytest.approx(3.5625)
    assert make_format("int4_per_token_head", 128).bits_per_element == pytest.approx(4.25)
    assert make_format("kivi2", 128).bits_per_element == pytest.approx(2.25)
    assert make_format("fp8_e4m3", 64).bits_per_element == 8.0
    assert resolve_names("k4v2_g128,fp8_e4m3", 128) == [
        "bf16", "kvarn_k4v2_g128@reference", "kvarn_k4v2_g128@improved", "fp8_e4m3"]
    with pytest.raises(ValueError, match="valid"):
        resolve_names("k9v9", 128)
    with pytest.raises(ValueError, match="valid"):
        make_format("nope", 64)


def test_kvarn_cache_view_keeps_sink_and_tail_fp16():
    torch.manual_seed(0)
    fmt = make_format("kvarn_k4v2_g64@improved", 64)
    k, v = torch.randn(200, 2, 64), torch.randn(200, 2, 64)
    kh, vh = fmt.cache_view(k, v)
    assert torch.equal(kh[:64], k[:64].half().float())  # sink
    assert torch.equal(vh[192:], v[192:].half().float())  # ragged tail
    err = (kh[64:192] - k[64:192]).norm() / k[64:192].norm()
    assert 0 < err < 0.2


def test_quantized_sink_format_quantizes_tile_zero():
    """``+qsink`` (KVARN_SINK=quantized): tile 0 is quantized like the others; resolvable by name only."""
    torch.manual_seed(0)
    fmt = make_format("kvarn_k4v2_g64@reference+qsink", 64)
    assert not fmt.sink and fmt.name == "kvarn_k4v2_g64@reference+qsink"
    assert "sink (block 0) quantized" in fmt.description
    k, v = torch.randn(200, 2, 64), torch.randn(200, 2, 64)
    kh, _ = fmt.cache_view(k, v)
    plain, _ = make_format("kvarn_k4v2_g64@reference", 64).cache_view(k, v)
    assert not torch.equal(kh[:64], k[:64].half().float()) and torch.equal(kh[64:], plain[64:])
    assert resolve_names("k4v2_g64@reference+qsink", 64) == ["bf16", "kvarn_k4v2_g64@reference+qsink"]
    assert not any(n.endswith("+qsink") for n in format_names(64))
    with pytest.raises(ValueError, match=r"may end in \+qsink"):
        make_format("kvarn_k4v2_g64@best+qsink", 64)
    # +q4sink (design probe): tile 0 quantized with 4-bit values, closer to the fp16 rows than +qsink's
    q4 = make_format("kvarn_k4v2_g64@reference+q4sink", 64)
    k4, v4 = q4.cache_view(k, v)
    _, vq = fmt.cache_view(k, v)
    assert q4.sink and torch.equal(k4[64:], plain[64:])
    err4, err2 = ((x[:64] - v[:64]).norm() / v[:64].norm() for x in (v4, vq))
    assert 0 < err4 < 0.5 * err2, (err4, err2)
    # +tsink (KVARN_SINK=token): tile 0 as +qsink reads it, except position 0 in fp16
    ts = make_format("kvarn_k4v2_g64@reference+tsink", 64)
    kt, vt = ts.cache_view(k, v)
    kq, _ = fmt.cache_view(k, v)
    assert ts.sink and "except its first token" in ts.description
    assert torch.equal(kt[0], k[0].half().float()) and torch.equal(vt[0], v[0].half().float())
    assert torch.equal(kt[1:], kq[1:]) and torch.equal(vt[1:], vq[1:])
    assert resolve_names("k4v2_g64@reference+tsink", 64) == ["bf16", "kvarn_k4v2_g64@reference+tsink"]
    sim = CacheSimulator(q4)
    kb, vb = k.permute(1, 0, 2)[None], v.permute(1, 0, 2)[None]  # [1, H, T, D]
    view_k, _ = sim._view(0, kb, vb, 128)
    torch.testing.assert_close(view_k[0].permute(1, 0, 2), k4[:128])


@pytest.mark.parametrize("fp16_tail", [True, False])
def test_teacher_forced_equals_step_by_step_decode(fp16_tail):
    """One chunked forward over T tokens == T single-token decode steps against the simulated cache."""
    model = tiny_llama()
    fmt = noisy_format(tile=16 if fp16_tail else 1, sink=fp16_tail, fp16_tail=fp16_tail)
    ids = torch.randint(0, 97, (1, 53))
    with torch.no_grad(), simulate_cache(model, fmt) as sim:
        full = model(ids).logits[0]
        sim.reset()
        cache = transformers.DynamicCache(config=model.config)
        steps = []
        for t in range(ids.shape[1]):
            out = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            steps.append(out.logits[0, -1])
    steps = torch.stack(steps)
    torch.testing.assert_close(full, steps, atol=2e-4, rtol=1e-4)
    with torch.no_grad():
        exact = model(ids).logits[0]
    assert (full - exact).abs().max() > 1e-2  # the fake codec really changed something


def test_exact_format_matches_plain_model_and_restores_attn():
    model = tiny_llama(1)
    ids = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        ref = model(ids).logits
        impl = model.config._attn_implementation
        with simulate_cache(model, make_format("bf16", 64)):
            got = model(ids).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation == impl


def test_cache_attention_rule_bruteforce():
    """Each query sees view for units before its own, fp16 for its own unit up to itself."""
    torch.manual_seed(3)
    fmt = noisy_format(tile=8)
    b, hq, hk, t, d = 1, 4, 2, 37, 64
    q, k, v = torch.randn(b, hq, t, d), torch.randn(b, hk, t, d), torch.randn(b, hk, t, d)
    sim = CacheSimulator(fmt)
    got = sim.attend(0, q, k, v, scaling=d ** -0.5)
    kv_full, vv_full = fmt.cache_view(k[0].transpose(0, 1), v[0].transpose(0, 1))  # [T,H,D]
    for pos in range(t):
        unit = pos // 8
        kk = torch.cat([kv_full[: unit * 8], k[0].transpose(0, 1)[unit * 8: pos + 1].half().float()])
        vv = torch.cat([vv_full[: unit * 8], v[0].transpose(0, 1)[unit * 8: pos + 1].half().float()])
        kk = kk.transpose(0, 1).repeat_interleave(hq // hk, 0)
        vv = vv.transpose(0, 1).repeat_interleave(hq // hk, 0)
        p = torch.softmax(q[0, :, pos:pos + 1] @ kk.transpose(1, 2) * d ** -0.5, -1)
        torch.testing.assert_close(got[0, :, pos:pos + 1], p @ vv, atol=1e-5, rtol=1e-5)


def test_lossless_prefill_then_quantized_decode():
    model = tiny_llama(2)
    fmt = noisy_format(tile=16)
    ids = torch.randint(0, 97, (1, 40))
    with torch.no_grad():
        exact = model(ids).logits[0, -1]
        with simulate_cache(model, fmt, prefill="lossless"):
            pre = model(ids).logits[0, -1]
    torch.testing.assert_close(pre, exact, atol=5e-3, rtol=1e-3)  # fp16 cast only
    with pytest.raises(ValueError, match="prefill"):
        CacheSimulator(fmt, prefill="bogus")


def test_cache_attention_per_token_format_reads_everything_quantized():
    torch.manual_seed(4)
    fmt = noisy_format(tile=1, sink=False, fp16_tail=False)
    q, k, v = torch.randn(1, 2, 5, 64), torch.randn(1, 2, 5, 64), torch.randn(1, 2, 5, 64)
    kq, vq = fmt.quantize(k[0].transpose(0, 1), v[0].transpose(0, 1))
    kq, vq = kq.transpose(0, 1)[None], vq.transpose(0, 1)[None]
    got = cache_attention(q, k, v, kq, vq, 0, fmt, None)
    want = torch.nn.functional.scaled_dot_product_attention(q, kq, vq, is_causal=True)
    torch.testing.assert_close(got, want)
