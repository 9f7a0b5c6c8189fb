"""`kvarn bench` building blocks: arms, capacity parsing, Prometheus parsing, workloads, quality
comparison, verdict logic, the vllm bench serve importer."""

from __future__ import annotations

import json

import pytest

from kvarn.bench import workloads as W
from kvarn.bench.importer import import_vllm_results
from kvarn.bench.metrics import SLO
from kvarn.bench.quality import compare_outputs
from kvarn.bench.server import (capacity_from_metrics, parse_arm, parse_arms, parse_capacity,
                                parse_prometheus)
from kvarn.bench.verdict import binding_resource, decide


def test_arm_names_map_to_serve_flags():
    assert parse_arm("bf16").serve_flags() == ["--kv-cache-dtype", "auto"]
    assert parse_arm("fp8").serve_flags() == ["--kv-cache-dtype", "fp8"]
    k = parse_arm("kvarn_k4v2_g128")
    assert k.serve_flags() == ["--kv-cache-dtype", "kvarn_k4v2_g128", "--block-size", "128"]
    assert parse_arm("kvarn_k4v4_g64").block_size == 64
    q = parse_arm("kvarn_k4v2_g128+qsink")  # the same pages, served with KVARN_SINK=quantized
    assert q.name == "kvarn_k4v2_g128+qsink" and q.is_kvarn and q.env == (("KVARN_SINK", "quantized"),)
    assert q.serve_flags() == k.serve_flags() and k.env == ()
    t = parse_arm("kvarn_k4v2_g128+tsink")
    assert t.name == "kvarn_k4v2_g128+tsink" and t.env == (("KVARN_SINK", "token"),) and t.serve_flags() == k.serve_flags()
    ext = parse_arm("bf16=http://127.0.0.1:9000/")
    assert ext.base_url == "http://127.0.0.1:9000" and ext.is_baseline
    with pytest.raises(ValueError, match="kvarn_k4v2_g128"):
        parse_arm("int3")
    with pytest.raises(ValueError, match="kvarn_k4v2_g128"):
        parse_arm("kvarn_k3v3_g128")
    with pytest.raises(ValueError, match="duplicate"):
        parse_arms("bf16,bf16")


def test_capacity_and_prometheus_parsing():
    log = ("INFO [kv_cache_utils.py:2328] CPU KV cache size: 2,580,992 tokens, Maximum concurrency for 4,096 "
           "tokens per request: 630.12x\n")
    assert parse_capacity(log) == 2_580_992
    assert parse_capacity("INFO ... GPU KV cache size: 791792 tokens") == 791_792
    assert parse_capacity("nothing here") is None
    text = ('# HELP x\nvllm:num_preemptions_total{engine="0",model_name="m"} 3.0\n'
            'vllm:num_preemptions_total{engine="1",model_name="m"} 2.0\nvllm:kv_cache_usage_perc{a="b"} 0.5\n'
            'vllm:cache_config_info{block_size="16",cache_dtype="auto",num_gpu_blocks="49487"} 1.0\n')
    m = parse_prometheus(text)
    assert m["vllm:num_preemptions_total"] == 5.0 and m["vllm:kv_cache_usage_perc"] == 0.5
    assert capacity_from_metrics(text) == 49487 * 16
    assert capacity_from_metrics('vllm:cache_config_info{block_size="128",kv_cache_size_tokens="896",'
                                 'num_gpu_blocks="7"} 1.0') == 896


def test_workloads_are_seeded_and_shaped():
    text = W.TextSource(W._FALLBACK_TEXT)
    a = W.build_workload("chat", text, num_sessions=5, seed=3)
    b = W.build_workload("chat", text, num_sessions=5, seed=3)
    c = W.build_workload("chat", text, num_sessions=5, seed=4)
    assert [s.turns[0].user_text for s in a.sessions] == [s.turns[0].user_text for s in b.sessions]
    assert [s.turns[0].user_text for s in a.sessions] != [s.turns[0].user_text for s in c.sessions]
    burst = W.build_workload("burst-decode", text, num_sessions=3, scale=0.25)
    assert all(t.ignore_eos and t.max_tokens == 128 for s in burst.sessions for t in s.turns)
    agent = W.build_workload("long-context-agent", text, num_sessions=2, turns=3, scale=0.25)
    assert all(len(s.turns) == 3 and s.prefix == agent.sessions[0].prefix for s in agent.sessions)
    rag = W.build_workload("rag", text, num_sessions=2)
    long = W.build_workload("long-prompt", text, num_sessions=2, scale=0.125)  # 2-4K tokens at this scale
    assert all(2048 <= text.count_tokens(s.turns[0].user_text) <= 4096 + 40 for s in long.sessions)
    chat_len = max(text.count_tokens(s.turns[0].user_text) for s in a.sessions)
    assert min(text.count_tokens(s.turns[0].user_text) for s in rag.sessions) > chat_len
    # prompt length control: ~target tokens with the fallback counter
    import random
    for n in (16, 64, 300):
        assert abs(text.count_tokens(text.take(random.Random(0), n)) - n) <= 2
    with pytest.raises(ValueError, match="chat, long-context-agent, rag, burst-decode, long-prompt"):
        W.build_workload("nope", text)
    # --max-model-len default covers every request of a preset (prompt incl. history + output)
    for name in W.PRESET_NAMES:
        for scale in (0.125, 0.25, 1.0):
            wl = W.build_workload(name, text, num_sessions=4, scale=scale, turns=4)
            for s in wl.sessions:
                hist = text.count_tokens(s.prefix)
                for t in s.turns:
                    hist += text.count_tokens(t.user_text)
                    assert hist + t.max_tokens <= W.needed_model_len(name, scale, 4), (name, scale)
                    hist += t.max_tokens  # the reply joins the history


def test_jsonl_workload_roundtrip(tmp_path):
    text = W.TextSource(W._FALLBACK_TEXT)
    agent = W.build_workload("long-context-agent", text, num_sessions=2, turns=2, scale=0.1)
    p = tmp_path / "w.jsonl"
    W.dump_jsonl(agent, p)
    back = W.build_workload(f"file:{p}", text)
    assert back.num_requests == 4 and len(back.sessions) == 2
    assert back.sessions[0].turns[0].user_text.startswith(agent.sessions[0].prefix)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"max_tokens": 3}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        W.build_workload(f"file:{bad}", text)


def test_quality_comparison_numbers():
    base = [{"tokens": ["a", "b", "c", "d"], "logprobs": [-1.0, -1.0, -1.0, -1.0], "text": "", "error": ""},
            {"tokens": ["x", "y"], "logprobs": [-0.5, -0.5], "text": "", "error": ""}]
    arm = [{"tokens": ["a", "b", "z", "d"], "logprobs": [-1.2, -1.4, -3.0, -1.0], "text": "", "error": ""},
           {"tokens": ["x", "y"], "logprobs": [-0.5, -0.7], "text": "", "error": ""}]
    q = compare_outputs(arm, base)
    assert q["exact_match_rate"] == 0.5
    assert q["mean_first_divergence"] == 2.0 and q["min_first_divergence"] == 2
    assert q["token_agreement"] == pytest.approx((2 / 4 + 1.0) / 2)
    assert q["mean_logprob_diff"] == pytest.approx((-0.2 - 0.4 + 0.0 - 0.2) / 4)
    assert q["mean_abs_logprob_diff"] == pytest.approx(0.8 / 4)


def _level(c, thr, ttft, tpot, pre=0, kv=0.3, failed=0):
    return {"concurrency": c, "request_rate": None, "completed": 8, "failed": failed, "output_throughput": thr,
            "p95_ttft_ms": ttft, "p95_tpot_ms": tpot, "num_preemptions": pre, "max_kv_cache_usage_perc": kv,
            "stable": pre == 0 and failed == 0 and ttft <= 1000 and tpot <= 50}


def _arm(name, dtype, cap, levels, stop, q=None):
    stable = [x for x in levels if x["stable"]]
    msc = 0
    for x in levels:
        if not x["stable"]:
            break
        msc = x["concurrency"]
    return {"name": name, "kv_cache_dtype": dtype, "status": "ok", "error": "", "kv_capacity_tokens": cap,
            "levels": levels, "stop_reason": stop, "max_stable_concurrency": msc, "quality": q,
            "throughput_at_slo": max((x["output_throughput"] for x in stable), default=0.0)}


GOOD_Q = {"exact_match_rate": 0.9, "token_agreement": 0.95, "mean_logprob_diff": -0.01}


def test_verdict_memory_bound_ships_and_compute_bound_does_not():
    mem = {"baseline": "bf16", "workload": {"name": "burst-decode"}, "mode": "concurrency", "arms": [
        _arm("bf16", "auto", 1000, [_level(1, 10, 100, 20), _level(2, 19, 110, 21),
                                    _level(4, 20, 900, 40, pre=3, kv=1.0)], "preemption"),
        _arm("kvarn_k4v2_g128", "kvarn_k4v2_g128", 4700, [_level(1, 9.5, 100, 21), _level(2, 18, 110, 22),
                                                          _level(4, 34, 130, 23, kv=0.6)], "max_level", GOOD_Q)]}
    v = decide(mem)
    assert v["binding_resource"] == "kv_memory" and v["memory_pressure"] is True
    assert v["recommendation"] == "ship" and v["headline"].startswith("SHIP")
    assert v["numbers"]["max_stable_concurrency"] == [2, 4]
    assert v["numbers"]["kv_capacity_ratio"] == pytest.approx(4.7)
    comp = {"baseline": "bf16", "workload": {"name": "chat"}, "mode": "concurrency", "arms": [
        _arm("bf16", "auto", 1000, [_level(1, 10, 100, 20), _level(2, 20, 100, 20)], "max_level"),
        _arm("kvarn_k4v2_g128", "kvarn_k4v2_g128", 4700, [_level(1, 8, 100, 25), _level(2, 16, 100, 25)],
             "max_level", GOOD_Q)]}
    v2 = decide(comp)
    assert v2["binding_resource"] == "compute" and v2["memory_pressure"] is False
    assert v2["recommendation"] == "don't ship"
    # a candidate that could not start is a "don't ship" with its error, not a crash
    comp["arms"][1].update(status="failed", error="server exited with code 1: OOM", levels=[])
    v3 = decide(comp)
    assert v3["recommendation"] == "don't ship" and "OOM" in v3["headline"]
    assert binding_resource({"levels": [_level(1, 1, 2000, 1)], "stop_reason": "slo"}) == "latency"


def test_import_vllm_bench_serve_json(tmp_path):
    def rec(label, c, thr, ttft):
        return {"date": "20261129-100000", "backend": "vllm", "label": label, "model_id": "Qwen/Qwen3-8B",
                "num_prompts": 64, "request_rate": "inf", "max_concurrency": c, "duration": 10.0, "completed": 64,
                "failed": 0, "total_input_tokens": 6400, "total_output_tokens": 6400, "request_throughput": 6.4,
                "request_goodput": 6.4, "output_throughput": thr, "total_token_throughput": 2 * thr,
                "mean_ttft_ms": ttft, "median_ttft_ms": ttft, "std_ttft_ms": 1.0, "p99_ttft_ms": ttft * 1.5,
                "p95_ttft_ms": ttft * 1.2, "mean_tpot_ms": 20.0, "median_tpot_ms": 20.0, "p95_tpot_ms": 22.0,
                "p99_tpot_ms": 25.0, "mean_itl_ms": 20.0, "p99_itl_ms": 30.0, "mean_e2el_ms": 2000.0,
                "p99_e2el_ms": 2500.0}
    f1 = tmp_path / "bf16.json"
    f1.write_text(json.dumps(rec("bf16", 8, 500.0, 100.0)) + "\n" + json.dumps(rec("bf16", 16, 700.0, 3000.0)))
    f2 = tmp_path / "k.json"
    f2.write_text(json.dumps(rec("x", 8, 520.0, 100.0)))
    f3 = tmp_path / "k16.json"
    r16 = rec("x", 16, 1000.0, 150.0)
    del r16["p95_ttft_ms"], r16["p95_tpot_ms"], r16["p99_e2el_ms"]  # vLLM writes only the percentiles asked for
    r16["request_goodput"] = None  # and null goodput when no --goodput was given
    f3.write_text(json.dumps(r16))
    res = import_vllm_results([str(f1), f"kvarn_k4v2_g128={f2}", f"kvarn_k4v2_g128={f3}"],
                              SLO.parse("ttft_ms=2000,tpot_ms=80"))
    names = [a["name"] for a in res["arms"]]
    assert names == ["bf16", "kvarn_k4v2_g128"]
    assert res["arms"][1]["kv_cache_dtype"] == "kvarn_k4v2_g128"
    assert res["arms"][0]["levels"][1]["p99_ttft_ms"] == 4500.0
    assert [a["max_stable_concurrency"] for a in res["arms"]] == [8, 16]
    assert res["verdict"]["recommendation"] == "ship"
    import jsonschema

    from kvarn.bench.schema import RESULT_SCHEMA

    jsonschema.validate(res, RESULT_SCHEMA)
    assert res["arms"][1]["levels"][1]["p95_ttft_ms"] is None and res["arms"][1]["levels"][1]["stable"]
    with pytest.raises(ValueError, match="vllm bench serve"):
        bad = tmp_path / "bad.json"
        bad.write_text('{"hello": 1}')
        import_vllm_results([str(bad)])


def test_server_log_parsing_root_cause_and_pool():
    from kvarn.bench.server import _error_line, parse_side_memory

    log = ("(APIServer) WARNING x Found ulimit ... `OSError: [Errno 24] Too many open files`\n"
           "(EngineCore) ERROR core.py ValueError: To serve at least one request ... KV cache memory\n"
           "Traceback (most recent call last):\nRuntimeError: Engine core initialization failed. See root cause above.\n")
    assert _error_line(log).startswith("ValueError: To serve at least one request")
    assert parse_side_memory("kvarn: ... = 112.5 MiB (pool_bytes=117964800), not included") == 117964800
    assert parse_side_memory("no pool here") is None


def test_dummy_model_gets_tokenizer_vocab(tmp_path):
    from kvarn.bench.dummy_model import make_dummy_model

    shape = tmp_path / "shape"
    shape.mkdir()
    (shape / "config.json").write_text(json.dumps({"model_type": "qwen3", "vocab_size": 151936,
                                                   "bos_token_id": 151643, "num_hidden_layers": 36}))
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0, "b": 1, "c": 2}},
                                                    "added_tokens": [{"id": 3, "content": "<eos>"}]}))
    (tok / "config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 3}))
    out = make_dummy_model(shape, tmp_path / "out", tok)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] == 4 and cfg["bos_token_id"] == 0 and cfg["eos_token_id"] == 3
    assert cfg["num_hidden_layers"] == 36 and (out / "tokenizer.json").is_file()
    with pytest.raises(ValueError, match="no config.json"):
        make_dummy_model(tmp_path / "nope", tmp_path / "o2", tok)


def test_shipped_schema_file_matches_module_and_flowchart_is_svg():
    import xml.etree.ElementTree as ET
    from pathlib import Path

    from kvarn.bench.report_html import flowchart_svg
    from kvarn.bench.schema import RESULT_SCHEMA

    shipped = Path(__file__).parent.parent / "docs" / "bench_result.schema.json"
    assert json.loads(shipped.read_text()) == RESULT_SCHEMA, "regenerate with: kvarn bench schema > " + str(shipped)
    for branch, name in ((True, "yes"), (False, "no"), (None, "unknown")):
        svg = ET.fromstring(flowchart_svg(branch))
        assert svg.get("data-branch") == name
