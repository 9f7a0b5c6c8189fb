"""kvarn plan: arithmetic checked by hand-computed cases, inputs, CLI and JSON output."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from kvarn.config import KvarnConfig
from kvarn.plan import roofline
from kvarn.plan.advisor import make_plan, quality_tier
from kvarn.plan.calibrate import calibrate
from kvarn.plan.cli import main, register
from kvarn.plan.formats import all_format_names, get_format, turboquant_bytes
from kvarn.plan.gpus import GPU, get_gpu, vllm_batch_defaults
from kvarn.plan.memory import RESERVE_BYTES, activation_peak_bytes, capacity, kv_memory_bytes
from kvarn.plan.model import load_model, shape_from_config
from kvarn.plan.predict import predict_format
from kvarn.plan.workloads import PRESET_NAMES, Workload, build_workload

GiB = 1024**3


@pytest.fixture(scope="module")
def q8():
    return load_model("qwen3-8b")


# ---- model shape ---------------------------------------------------------------------------
def test_qwen3_8b_parameter_count_by_hand(q8):
    h, i, L, V = 4096, 12288, 36, 151936
    per_layer = h * 4096 + 2 * h * 1024 + 4096 * h + 3 * h * i + 2 * h + 2 * 128
    assert q8.params_total == L * per_layer + 2 * V * h + h == 8_190_735_360
    assert q8.weight_bytes == 2 * 8_190_735_360
    assert q8.params_active == q8.params_total - V * h - h  # no input-embedding lookup, no final norm


def test_tied_embeddings_counted_once():
    cfg = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=128, vocab_size=1000, tie_word_embeddings=True)
    s = shape_from_config(cfg)
    assert s.head_dim == 16
    per = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128 + 2 * 64
    assert s.params_total == 2 * per + 1000 * 64 + 64


def test_moe_active_params():
    cfg = dict(num_hidden_layers=1, hidden_size=8, num_attention_heads=2, num_key_value_heads=1, head_dim=4,
               intermediate_size=0, vocab_size=10, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=6)
    s = shape_from_config(cfg)
    assert s.mlp_params_per_layer == 4 * 3 * 8 * 6 + 8 * 4
    assert s.mlp_active_params_per_layer == 2 * 3 * 8 * 6 + 8 * 4
    # all 4 experts touched at a large batch; no input embedding (10 x 8) and no final norm (8) read
    assert s.weight_bytes_read_per_step(10_000) == pytest.approx(s.weight_bytes - 2 * (10 * 8 + 8), rel=1e-6)


def test_bad_model_lists_builtins(tmp_path):
    with pytest.raises(ValueError, match="qwen3-8b"):
        load_model(str(tmp_path / "nope"))
    assert load_model("Qwen/Qwen3-8B").num_layers == 36


# ---- formats -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,expected", [
    ("bf16", 512), ("auto", 512), ("fp8", 256), ("int8_per_token_head", 264), ("int4_per_token_head", 136),
    ("turboquant_k8v4", 196), ("turboquant_4bit_nc", 134), ("turboquant_k3v4_nc", 118),
    ("turboquant_3bit_nc", 102), ("kvarn_k4v2_g128", 108), ("kvarn_k4v2_g64", 114), ("kvarn_k4v4_g128", 140),
    ("kvarn_k2v2_g128", 76),
])
def test_bytes_per_token_head_d128(name, expected):
    assert get_format(name, 128).bytes_per_token_head == expected


def test_int4_ratio_matches_baselines():
    assert 512 / get_format("int4_per_token_head", 128).bytes_per_token_head == pytest.approx(2_980_912 / 791_792,
                                                                                            rel=1e-4)


def test_kvarn_bytes_come_from_config():
    for d in (64, 128, 256):
        want = KvarnConfig.from_name("k4v2_g64", d).bytes_per_token
        assert get_format("kvarn_k4v2_g64", d).bytes_per_token_head == want


def test_turboquant_d64_and_edge_layers():
    assert turboquant_bytes(8, 4, 64) == 64 + 32 + 4
    assert turboquant_bytes(3, 3, 64) == (24 + 2) + (24 + 4)
    f = get_format("turboquant_4bit_nc", 128)
    # 36 layers: 2 + 2 boundary layers stay bf16
    assert f.layer_bytes_per_token(36, 8, 128) == 8 * (32 * 134 + 4 * 512)


def test_unknown_format_and_unsupported_head_dim():
    with pytest.raises(ValueError, match="int4_per_token_head"):
        get_format("int3", 128)
    f = get_format("kvarn_k4v2_g128", 96)
    assert not f.supported and "96" in f.why_unsupported


# ---- GPUs ------------------------------------------------------------------------------------
def test_gpu_table_and_overrides():
    assert get_gpu("H200").memory_bytes == 150_109_880_320
    assert get_gpu("h100", price_per_hour=9.0).price_per_hour == 9.0
    c = get_gpu("custom", memory_gib=10, hbm_tbs=1, bf16_tflops=100)
    assert c.memory_bytes == 10 * GiB
    with pytest.raises(ValueError, match="h200"):
        get_gpu("tpu")
    with pytest.raises(ValueError, match="--gpu-mem-gib"):
        get_gpu("custom")
    assert vllm_batch_defaults(get_gpu("h200"), "offline") == (16384, 1024)
    assert vllm_batch_defaults(get_gpu("h200"), "serve") == (8192, 1024)
    assert vllm_batch_defaults(get_gpu("a100-80"), "serve") == (2048, 256)
    assert vllm_batch_defaults(get_gpu("b200"), "serve") == (16384, 1024)


# ---- memory ----------------------------------------------------------------------------------
def test_kv_memory_by_hand(q8):
    g = get_gpu("h200")
    act = 16384 * 2 * (3 * 12288 + 2 * 4096)
    assert activation_peak_bytes(q8, 1, 16384) == act
    assert kv_memory_bytes(g, q8, 1, 0.9, 16384) == pytest.approx(0.9 * g.memory_bytes - 2 * 8_190_735_360 - act
                                                                  - RESERVE_BYTES)
    cap = capacity(g, q8, get_format("bf16", 128), 1, 0.9, 16384, 1024)
    per_token = 36 * 8 * 512
    assert cap.bytes_per_token == per_token == 147_456
    assert cap.capacity_tokens == int(cap.kv_memory_bytes // (16 * per_token)) * 16


def test_tensor_parallel_splits_weights_and_heads(q8):
    g = get_gpu("h100")
    c1 = capacity(g, q8, get_format("bf16", 128), tp=1, util=0.9)
    c2 = capacity(g, q8, get_format("bf16", 128), tp=2, util=0.9)
    assert c2.bytes_per_token == c1.bytes_per_token / 2
    assert c2.kv_memory_bytes > c1.kv_memory_bytes  # half the weights and MLP activations per GPU
    assert q8.kv_heads_per_gpu(16) == 1  # replicated beyond num_kv_heads


def test_kvarn_pool_counted_against_kv_memory(q8):
    g = get_gpu("h200")
    f = get_format("kvarn_k4v2_g128", 128)
    cap = capacity(g, q8, f, 1, 0.9, max_num_batched_tokens=8192, max_num_seqs=16)
    slots = 2 * 16 + math.ceil(8192 / 128) + 8
    pool = 36 * slots * 128 * 8 * 128 * 2 * 2
    assert (cap.pool_slots, cap.pool_bytes) == (slots, pool)
    record_tokens = int((cap.kv_memory_bytes - pool) // (128 * 36 * 8 * 108)) * 128
    assert cap.capacity_tokens == record_tokens


def test_kvarn_quantized_sink_format(q8):
    """kvarn_<preset>+qsink (served with KVARN_SINK=quantized): one pool slot per sequence, the sink's bytes
    read as a record in the roofline, same record size; measured on the H200 (2026-11-30, max_num_seqs 1024,
    pool counted): 3,005,696 vs 2,384,384 tokens."""
    g = get_gpu("h200")
    f, q = get_format("kvarn_k4v2_g128", 128), get_format("kvarn_k4v2_g128+qsink", 128)
    assert q.name == "kvarn_k4v2_g128+qsink" and q.kvarn.sink == "quantized" and q.bytes_per_token_head == 108
    c, cq = (capacity(g, q8, x, 1, 0.9, 16384, 1024, cap_pool=False) for x in (f, q))
    assert (c.pool_slots, cq.pool_slots) == (2 * 1024 + 128 + 8, 1024 + 128 + 8)
    assert cq.capacity_tokens / 791_792 == pytest.approx(3_005_696 / 791_792, rel=0.02)
    assert c.capacity_tokens / 791_792 == pytest.approx(2_384_384 / 791_792, rel=0.02)
    ctx = 1536
    saved = roofline.kv_read_bytes_per_seq(q8, f, 1, ctx) - roofline.kv_read_bytes_per_seq(q8, q, 1, ctx)
    assert saved == pytest.approx(36 * 8 * 128 * (512 - 108))  # one sink tile read as a record
    with pytest.raises(ValueError, match="valid names"):
        get_format("kvarn_k9v2_g128+qsink", 128)
    # +tsink (KVARN_SINK=token): the quantized sink's pool plus 2 x max_num_seqs sink rows (16 slots of 128);
    # measured on the H200 (2026-11-30 23:19, max_num_seqs 1024): 2,995,968 tokens, pool_bytes=22196256768
    t = get_format("kvarn_k4v2_g128+tsink", 128)
    assert t.name == "kvarn_k4v2_g128+tsink" and t.kvarn.sink == "token"
    ct = capacity(g, q8, t, 1, 0.9, 16384, 1024, cap_pool=False)
    assert ct.pool_slots == cq.pool_slots + 16 == 1176 and ct.pool_bytes == 22_196_256_768  # the startup line's
    assert ct.capacity_tokens / 791_792 == pytest.approx(2_995_968 / 791_792, rel=0.02)
    assert "kvarn_k4v2_g128+tsink" in all_format_names()


def test_kvarn_pool_caps_max_num_seqs_on_small_gpu(q8):
    cap = capacity(get_gpu("rtx4090"), load_model("qwen3-4b"), get_format("kvarn_k4v2_g128", 128), 1, 0.9,
                   2048, 256)
    assert cap.max_num_seqs < 256 and "capped" in cap.note


# ---- roofline --------------------------------------------------------------------------------
def test_decode_step_by_hand():
    gpu = GPU("toy", 100 * GiB, 1.0, 100.0, 100.0, 1.0, 1000)
    cfg = dict(num_hidden_layers=2, hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
               intermediate_size=512, vocab_size=1000)
    s = shape_from_config(cfg)
    f = get_format("fp8", 64)
    st = roofline.decode_step(gpu, s, f, tp=1, n=2, ctx=1000)
    w = s.weight_bytes_read_per_step(2)
    assert st.linear == pytest.approx(max(w / (1e12 * roofline.GEMM_BW_EFF),
                                          2 * s.params_active * 2 / (100e12 * roofline.MFU_DECODE)))
    kv = 2 * 1000 * 2 * 2 * 128  # n * ctx * layers * heads * (2 * D * 1 byte)
    occ = min(1.0, 2 * 2 * 3 / (1000 * roofline.CTAS_PER_SM))  # 1000 // 256 = 3 splits
    assert st.attn == pytest.approx(kv / (1e12 * f.attn_eff * occ))
    assert st.overhead == pytest.approx(roofline.STEP_OVERHEAD_S + 2 * roofline.SEQ_OVERHEAD_S)
    assert st.flush == 0 and st.allreduce == 0


def test_kvarn_reads_sink_and_tail_in_fp16(q8):
    f = get_format("kvarn_k4v2_g128", 128)
    got = roofline.kv_read_bytes_per_seq(q8, f, 1, 1000)
    assert got == pytest.approx(8 * 36 * (192 * 512 + (1000 - 192) * 108))
    assert roofline.kv_read_bytes_per_seq(q8, f, 1, 100) == 8 * 36 * 100 * 512


# ---- workloads -------------------------------------------------------------------------------
def test_preset_names_match_bench():
    assert PRESET_NAMES == ("chat", "long-context-agent", "rag", "burst-decode", "long-prompt")
    for name in PRESET_NAMES:
        w = build_workload(name)
        assert w.num_requests > 0 and w.mean_output >= 1
    assert build_workload("chat").requests == build_workload("chat").requests  # seeded


def test_jsonl_both_key_spellings(tmp_path):
    p = tmp_path / "w.jsonl"
    p.write_text('{"prompt_tokens": 100, "output_tokens": 10}\n\n{"prompt_len": 300, "output_len": 30}\n'
                 '{"prompt": "' + "x" * 400 + '", "max_tokens": 5}\n')
    w = build_workload(f"file:{p}")
    assert w.requests == [(100, 10), (300, 30), (100, 5)] and w.burst
    assert w.mean_decode_context == pytest.approx((10 * 105.5 + 30 * 315.5 + 5 * 103) / 45)
    (tmp_path / "bad.jsonl").write_text('{"prompt_tokens": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        build_workload(f"file:{tmp_path / 'bad.jsonl'}")
    with pytest.raises(ValueError, match="burst-decode"):
        build_workload("nope")


# ---- predictions and decision ------------------------------------------------------------------
def test_throughput_formula_closed_loop(q8):
    g = get_gpu("h200")
    f = get_format("bf16", 128)
    wl = Workload("x", [(1000, 100)], concurrency=8)
    pred, _ = predict_format(g, q8, f, wl)
    t_pre = roofline.prefill_time(g, q8, f, 1, 1000)
    step = roofline.decode_step(g, q8, f, 1, 8, wl.mean_decode_context).total + 8 / 100 * t_pre
    assert pred.resident_seqs == 8
    assert pred.output_tok_s == pytest.approx(8 / step, rel=1e-3)
    assert pred.cost_per_mtok_usd == pytest.approx(3.5 / 3600 / pred.output_tok_s * 1e6, rel=1e-3)


def test_prefill_chunks_and_kvarn_dense_route(q8):
    """Attention to positions cached before a chunk runs at kvarn's cached_prefill_eff: a fresh prompt in one
    chunk costs kvarn only its flush; burst L's 32K-token prompts in 16K chunks come out at the measured
    1.164x of bf16 (H200, 2026-11-30: 23,180.4 vs 19,922.0 ms of prefill)."""
    g, bf, kv = get_gpu("h200"), get_format("bf16", 128), get_format("kvarn_k4v2_g128", 128)
    one = roofline.prefill_time(g, q8, bf, 1, 32768)
    assert roofline.prefill_time(g, q8, bf, 1, 32768, 0, 16384) == pytest.approx(one)  # bf16: chunking is free
    flush = 32768 * q8.num_layers * q8.num_kv_heads / 128 * kv.flush_s_per_tile
    assert roofline.prefill_time(g, q8, kv, 1, 32768) == pytest.approx(one + flush)
    ratio = (roofline.prefill_time(g, q8, kv, 1, 32768, 0, 16384)
             / roofline.prefill_time(g, q8, bf, 1, 32768, 0, 16384))
    assert ratio == pytest.approx(23180.4 / 19922.0, rel=0.01)
    hit = (1, 4096, 28672, 8192)  # 4K new tokens after a 28K prefix-cache hit
    assert roofline.prefill_time(g, q8, kv, *hit) > roofline.prefill_time(g, q8, bf, *hit)


def test_request_rate_below_saturation_delivers_offered_load(q8):
    wl = Workload("x", [(500, 200)], request_rate=2.0)
    pred, _ = predict_format(get_gpu("h200"), q8, get_format("bf16", 128), wl)
    assert not pred.saturated and pred.output_tok_s == pytest.approx(400, rel=1e-3)


def test_gpus_for_target(q8):
    g = get_gpu("h200")
    wl = build_workload("burst:768:1024:1024")
    pred, cap = predict_format(g, q8, get_format("bf16", 128), wl, max_num_batched_tokens=16384)
    assert pred.gpus_for_target == math.ceil(768 / (cap.capacity_tokens // 2048))


def test_quality_tiers():
    assert quality_tier("bf16") == 0 and quality_tier("fp8") == 1
    assert quality_tier("kvarn_k4v2_g128") == 2 and quality_tier("turboquant_3bit_nc") == 3


def test_plan_long_context_agent_and_json(tmp_path, q8):
    plan = make_plan(get_gpu("h100"), q8, build_workload("long-context-agent"), tp=2)
    assert plan["decision"]["branch"] in ("memory-pressure", "kv-bandwidth", "no-pressure")
    assert {f["format"] for f in plan["formats"]} >= {"bf16", "fp8", "kvarn_k4v2_g128", "turboquant_k8v4"}
    out = tmp_path / "p.json"
    assert main(["--model", "qwen3-8b", "--gpu", "h100", "--tp", "2", "--workload", "rag", "--json", str(out)]) == 0
    def no_nan(x):
        raise AssertionError(f"non-strict JSON constant {x}")

    doc = json.loads(out.read_text(), parse_constant=no_nan)
    assert doc["schema_version"] == 1 and set(doc) >= {"inputs", "workload", "memory", "formats", "decision"}


def test_cli_register_and_errors(capsys):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    register(sub)
    args = parser.parse_args(["plan", "--gpu", "h200", "--workload", "burst-decode", "--formats", "bf16,fp8"])
    assert args.func(args) == 0
    assert "try first" in capsys.readouterr().out
    assert main(["--gpu", "x100"]) == 2
    assert "valid: h100" in capsys.readouterr().err


def test_calibrate_reports_error(tmp_path):
    res = {"arms": [
        {"name": "bf16", "kv_cache_dtype": "auto", "kv_capacity_tokens": 800_000,
         "levels": [{"concurrency": 16, "output_throughput": 2000.0, "completed": 16,
                     "total_input_tokens": 16 * 2048, "total_output_tokens": 16 * 512}]},
        {"name": "kvarn_k4v2_g128", "levels": [{"concurrency": 4, "output_throughput": 100.0}]},
        {"name": "mystery"},
    ], "workload": {"name": "burst:16:2048:512"}}
    p = tmp_path / "r.json"
    p.write_text(json.dumps(res))
    cal = calibrate(p, get_gpu("h200"), load_model("qwen3-8b"), mode="offline")
    assert len(cal["rows"]) == 2
    r = cal["rows"][0]
    assert r["throughput_error"] == pytest.approx(r["predicted_output_tok_s"] / 2000 - 1, abs=1e-4)
    assert r["capacity_error"] == pytest.approx(r["predicted_capacity_tokens"] / 800_000 - 1, abs=1e-4)
    assert any("mystery" in s for s in cal["skipped"])
    assert main(["--gpu", "h200", "--calibrate", str(p), "--mode", "offline"]) == 0


def test_calibrate_refuses_a_result_that_is_not_a_bench_result(tmp_path, capsys):
    """A bench_vllm_bursts.py JSON (a list of runs) is not a `kvarn bench` result: one clear error, exit 2."""
    p = tmp_path / "bursts.json"
    p.write_text(json.dumps([{"kv": "kvarn_k4v2_g128", "burst": "A", "out_tok_s": 13140.1}]))
    with pytest.raises(ValueError, match="not a kvarn bench result"):
        calibrate(p, get_gpu("h200"), load_model("qwen3-8b"))
    assert main(["--gpu", "h200", "--calibrate", str(p)]) == 2
    assert "not a kvarn bench result" in capsys.readouterr().err


def test_model_that_does_not_fit():
    plan = make_plan(get_gpu("rtx4090"), load_model("qwen3-32b"), build_workload("chat"))
    d = plan["decision"]
    assert d["try_first"] is None and "smallest tensor-parallel size" in d["why"] and d["why"].endswith("4")
    assert all(not f["fits_workload"] for f in plan["formats"])


def test_kvarn_kernel_overrides_and_breakeven(q8):
    f = get_format("kvarn_k4v2_g128", 128, kvarn_attn_eff=0.5, kvarn_flush_us=2.0)
    assert (f.attn_eff, f.flush_s_per_tile) == (0.5, 2e-6)
    assert get_format("fp8", 128, kvarn_attn_eff=0.5).attn_eff == get_format("fp8", 128).attn_eff
    with pytest.raises(ValueError, match="kvarn-attn-eff"):
        get_format("kvarn_k4v2_g128", 128, kvarn_attn_eff=1.5)
    g, wl = get_gpu("h200"), build_workload("burst:768:1024:1024")
    plan = make_plan(g, q8, wl, mode="offline", formats=["bf16", "fp8", "kvarn_k4v2_g128"], kvarn_flush_us=2.4)
    eff = plan["decision"]["kvarn_k4v2_g128_attn_eff_to_match"]["bf16"]
    bf16 = plan["formats"][0]["output_tok_s"]
    again = make_plan(g, q8, wl, mode="offline", formats=["bf16", "kvarn_k4v2_g128"], kvarn_flush_us=2.4,
                      kvarn_attn_eff=eff)
    assert again["formats"][1]["output_tok_s"] == pytest.approx(bf16, rel=0.01)


def test_kvarn_decode_prior_follows_the_kernel_that_serves_the_layout():
    """kvarn_k4v2_g128 at head_dim 128 and GQA 4 (the Gluon record pass on the H200) gets KVARN_ATTN_EFF; GQA 8,
    other presets and head_dims run the Triton kernel, KVARN_TRITON_ATTN_EFF; --kvarn-attn-eff wins over both;
    the report's 'assumed' figure is the prior of the model's layout."""
    from kvarn.plan.formats import KVARN_ATTN_EFF, KVARN_TRITON_ATTN_EFF
    from kvarn.plan.report import render_text
    assert get_format("kvarn_k4v2_g128", 128, q_heads_per_kv=4).attn_eff == KVARN_ATTN_EFF
    assert get_format("kvarn_k4v2_g128+tsink", 128).attn_eff == KVARN_ATTN_EFF
    assert KVARN_TRITON_ATTN_EFF < KVARN_ATTN_EFF
    for name, d, qpk in (("kvarn_k4v2_g128", 128, 8), ("kvarn_k4v4_g128", 128, 4), ("kvarn_k4v2_g64", 128, 4),
                         ("kvarn_k4v2_g128", 64, 4)):
        assert get_format(name, d, q_heads_per_kv=qpk).attn_eff == KVARN_TRITON_ATTN_EFF, (name, d, qpk)
    assert get_format("kvarn_k4v2_g128", 128, kvarn_attn_eff=0.5, q_heads_per_kv=8).attn_eff == 0.5
    g, wl = get_gpu("h200"), build_workload("burst:768:1024:1024")
    q32 = load_model("qwen3-32b")  # 64 query heads over 8 KV heads
    assert q32.num_heads // q32.num_kv_heads == 8
    text = render_text(make_plan(g, q32, wl, tp=2, mode="offline", formats=["bf16", "fp8", "kvarn_k4v2_g128"]))
    assert f"(assumed {KVARN_TRITON_ATTN_EFF}," in text


def test_cli_json_stdout(capsys):
    assert main(["--workload", "burst:4:100:50", "--formats", "fp8", "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [f["format"] for f in doc["formats"]] == ["bf16", "fp8"]  # bf16 is always the baseline
    assert doc["decision"]["branch"] == "no-pressure" and doc["decision"]["try_first"] == "bf16"


def test_calibrate_sizes_kvarn_pool_by_server_max_num_seqs(tmp_path):
    res = {"arms": [{"name": "kvarn", "kv_cache_dtype": "kvarn_k4v2_g128", "kv_capacity_tokens": 1_000_000,
                     "levels": [{"concurrency": 8, "output_throughput": 500.0, "completed": 8,
                                 "total_input_tokens": 8 * 1000, "total_output_tokens": 8 * 200}]}]}
    p = tmp_path / "r.json"
    p.write_text(json.dumps(res))
    g, s = get_gpu("rtx4090"), load_model("qwen3-4b")
    cal = calibrate(p, g, s, max_num_seqs=256)  # a server started with --max-num-seqs 256
    want = capacity(g, s, get_format("kvarn_k4v2_g128", 128), 1, 0.9, 2048, 256, cap_pool=False)
    assert "capped" not in want.note
    assert cal["rows"][0]["predicted_capacity_tokens"] == want.capacity_tokens
