"""kvarn fidelity: synthetic generator structure, metric definitions, the run/JSON contract, the CLI, capture."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from kvarn.fidelity import ROW_KEYS, all_methods, attention_metrics, nmse, rope, run_fidelity, synthetic_kv
from kvarn.fidelity import cli as fidelity_cli
from kvarn.fidelity.metrics import causal_attention

pytestmark = pytest.mark.usefixtures("one_torch_thread")


JSON_KEYS = {"method", "preset", "numerics", "bits_per_element", "bytes_per_token", "nmse_k", "nmse_v",
             "attn_score_cosine", "attn_output_rel_err", "worst5_vector_err", "source"}


def test_rope_is_a_relative_rotation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, 64, generator=g)
    y = rope(x, theta=1e4)
    assert torch.allclose(y[0], x[0])  # position 0: identity
    pair_norm = lambda z: (z[..., :32] ** 2 + z[..., 32:] ** 2)
    assert torch.allclose(pair_norm(y), pair_norm(x), atol=1e-4)  # rotates (i, i+D/2) pairs
    # <rope(q)_m, rope(k)_n> depends on m - n only
    q, k = torch.randn(1, 1, 64, generator=g), torch.randn(1, 1, 64, generator=g)
    qq, kk = rope(q.expand(16, 1, 64).contiguous()), rope(k.expand(16, 1, 64).contiguous())
    assert torch.isclose((qq[7] * kk[3]).sum(), (qq[12] * kk[8]).sum(), atol=1e-4)


def test_synthetic_structure():
    s = synthetic_kv(512, 2, 128, num_q_heads=6, v_std=0.05, seed=3)
    assert s.q.shape == (512, 6, 128) and s.k.shape == s.v.shape == (512, 2, 128)
    assert torch.equal(s.k, synthetic_kv(512, 2, 128, num_q_heads=6, v_std=0.05, seed=3).k)  # deterministic
    assert not torch.equal(s.k, synthetic_kv(512, 2, 128, num_q_heads=6, v_std=0.05, seed=4).k)
    assert math.isclose(float(s.v.std()), 0.05, rel_tol=1e-3)
    # sink: token 0's key is far larger than the others and draws ~35% of the attention
    norms = s.k.norm(dim=-1)
    assert (norms[0] > 4 * norms[1:].median(dim=0).values).all()
    p, _ = causal_attention(s.q, s.k, s.v, 0)
    assert 0.2 < float(p[:, 1:, 0].mean()) < 0.5
    # outlier channels come in RoPE pairs (i, i + D/2): the 4 largest-energy channels form 2 pairs
    energy = (s.k[1:, 0] ** 2).mean(0)
    pair_energy = energy[:64] + energy[64:]
    top = set(energy.topk(4).indices.tolist())
    assert {i % 64 for i in top} == set(pair_energy.topk(2).indices.tolist())
    assert float(pair_energy.topk(2).values.min()) > 20 * float(pair_energy.median())
    with pytest.raises(ValueError, match="multiple"):
        synthetic_kv(128, 3, 64, num_q_heads=4)


def test_metrics_definitions():
    s = synthetic_kv(256, 2, 64, num_q_heads=4, v_std=0.5, seed=0)
    m = attention_metrics(s.q, s.k, s.v, s.k, s.v)
    assert m["nmse_k"] == 0 and m["nmse_v"] == 0 and m["attn_output_rel_err"] == 0 and m["worst5_vector_err"] == 0
    assert math.isclose(m["attn_score_cosine"], 1.0, rel_tol=1e-6)
    # scaling V by 1.1 scales every output by 1.1: every relative error is exactly 0.1
    m = attention_metrics(s.q, s.k, s.v, s.k, 1.1 * s.v)
    assert math.isclose(m["nmse_v"], 0.01, rel_tol=1e-4)
    assert math.isclose(m["attn_output_rel_err"], 0.1, rel_tol=1e-4)
    assert math.isclose(m["worst5_vector_err"], 0.1, rel_tol=1e-4)
    # a K perturbation lowers the score cosine; worst-5% >= the global error
    m = attention_metrics(s.q, s.k, s.v, s.k + 0.3 * torch.randn_like(s.k), s.v)
    assert m["attn_score_cosine"] < 1 and m["worst5_vector_err"] >= m["attn_output_rel_err"] > 0
    assert nmse(torch.ones(4), torch.zeros(4)) == 1.0


def test_causal_gqa_attention_matches_sdpa():
    s = synthetic_kv(128, 2, 64, num_q_heads=6, seed=1)
    ref = torch.nn.functional.scaled_dot_product_attention(
        s.q.transpose(0, 1), s.k.repeat_interleave(3, dim=1).transpose(0, 1),
        s.v.repeat_interleave(3, dim=1).transpose(0, 1), is_causal=True)  # [Hq, T, D]
    for h in range(2):
        _, o = causal_attention(s.q, s.k, s.v, h)
        assert torch.allclose(o, ref[3 * h:3 * h + 3], atol=1e-5)


def test_run_rows_contract_and_kvarn_beats_kivi2():
    methods = all_methods(["k2v2_g128", "k4v2_g128"], ["reference", "improved"], ["kivi2"])
    rows = run_fidelity(["synthetic"], seeds=1, tokens=256, methods=methods, progress=False)
    assert len(rows) == 2 * len(methods)  # head_dim 128 and 64
    for r in rows:
        assert set(r) == JSON_KEYS | {"head_dim", "keep_sink"} and set(ROW_KEYS) == JSON_KEYS
        assert r["keep_sink"] is False
        assert r["source"] == "synthetic" and r["head_dim"] in (64, 128)
        assert 0 <= r["nmse_k"] < 1 and 0 <= r["nmse_v"] < 1 and 0 < r["attn_score_cosine"] <= 1 + 1e-6
        assert math.isclose(r["bits_per_element"], 8 * r["bytes_per_token"] / (2 * r["head_dim"]))
    by = {(r["method"], r["head_dim"]): r for r in rows}
    assert by[("kvarn_k4v2_g128@improved", 128)]["bytes_per_token"] == 108
    assert by[("kvarn_k4v2_g128@improved", 128)]["preset"] == "k4v2_g128"
    assert by[("kivi2", 128)]["preset"] is None and by[("kivi2", 128)]["numerics"] is None
    for d in (128, 64):
        for num in ("reference", "improved"):
            kv, kivi = by[(f"kvarn_k2v2_g128@{num}", d)], by[("kivi2", d)]
            assert kv["nmse_k"] < kivi["nmse_k"] and kv["nmse_v"] < kivi["nmse_v"]


def _parser():
    p = argparse.ArgumentParser()
    fidelity_cli.register(p.add_subparsers())
    return p


def test_cli_json_and_table(tmp_path, capsys):
    out = tmp_path / "fid.json"
    args = _parser().parse_args(["fidelity", "--source", "synthetic", "--seeds", "1", "--tokens", "256",
                                 "--presets", "k4v2_g128", "--numerics", "improved", "--baselines", "fp8_e4m3",
                                 "--json", str(out)])
    assert args.func(args) == 0
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["kvarn_k4v2_g128@improved", "fp8_e4m3"] * 2
    text = capsys.readouterr().out
    assert "source=synthetic head_dim=128" in text and "kvarn_k4v2_g128@improved" in text


def test_cli_rejects_bad_input(capsys):
    p = _parser()
    args = p.parse_args(["fidelity", "--tokens", "100"])
    assert args.func(args) == 2
    args = p.parse_args(["fidelity", "--presets", "k3v3_g128", "--source", "synthetic"])
    assert args.func(args) == 1
    assert "valid" in capsys.readouterr().err


@pytest.mark.slow
def test_capture_smollm2_matches_model():
    """Captured post-RoPE q/k/v reproduce the model's own attention; the forward pass is unchanged."""
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from kvarn.assets import default_model_dir
    from kvarn.fidelity.capture import capture_qkv, load_model

    tok, model = load_model(default_model_dir())
    ids = tok("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
              "must be in want of a wife.", return_tensors="pt").input_ids
    with torch.no_grad():
        ref_logits = model(ids).logits
    samples = capture_qkv(model, ids, layers=[0, 29])
    assert [s.name for s in samples] == ["layer0", "layer29"]
    t = ids.shape[1]
    for s in samples:
        assert s.q.shape == (t, 9, 64) and s.k.shape == s.v.shape == (t, 3, 64)
        assert torch.isfinite(s.k).all() and s.v.abs().max() > 0
    # layer 0 from first principles: k = RoPE(k_proj(norm(embed(ids)))), v = v_proj(...), q likewise
    layer = model.model.layers[0]
    with torch.no_grad():
        x = layer.input_layernorm(model.model.embed_tokens(ids))[0]
        k_pre = layer.self_attn.k_proj(x).view(t, 3, 64)
        q_pre = layer.self_attn.q_proj(x).view(t, 9, 64)
        v0 = layer.self_attn.v_proj(x).view(t, 3, 64)
    assert torch.allclose(samples[0].k, rope(k_pre, theta=1e5), atol=1e-4)
    assert torch.allclose(samples[0].q, rope(q_pre, theta=1e5), atol=1e-4)
    assert torch.allclose(samples[0].v, v0, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, ref_logits, atol=1e-5)  # implementation restored
    assert model.config._attn_implementation != "kvarn_capture"


@pytest.mark.slow
def test_smollm2_fidelity_quick():
    pytest.importorskip("transformers")
    methods = all_methods(["k2v2_g128"], ["reference"], ["kivi2"])
    rows = run_fidelity(["smollm2"], passages=1, tokens=256, layer_stride=10, methods=methods, progress=False)
    by = {r["method"]: r for r in rows}
    assert set(by) == {"kvarn_k2v2_g128@reference", "kivi2"}
    assert all(r["source"] == "smollm2" and r["head_dim"] == 64 for r in rows)
    assert by["kvarn_k2v2_g128@reference"]["attn_output_rel_err"] < by["kivi2"]["attn_output_rel_err"]
