"""Metric code of `kvarn bench` checked exactly: on hand-made records, and end to end through the
streaming client against the deterministic fake server (known TTFT/ITL per request)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeConfig, start_in_thread  # noqa: E402

from kvarn.bench.client import RequestResult, run_closed_loop  # noqa: E402
from kvarn.bench.metrics import (SLO, compute_level_metrics, is_stable, max_stable_concurrency,  # noqa: E402
                                 meets_slo, request_tpot)
from kvarn.bench.workloads import Session, Turn, Workload  # noqa: E402


def _rec(ttft, itl, prompt=10, ok=True):
    return RequestResult(success=ok, prompt_len=prompt, output_tokens=len(itl) + 1, ttft=ttft, itl=list(itl),
                         latency=ttft + sum(itl), error="" if ok else "boom")


def test_metrics_match_vllm_formulas_exactly():
    recs = [_rec(0.1, [0.02] * 4), _rec(0.3, [0.01] * 9), _rec(0.2, []), _rec(0.5, [0.05, 0.05]),
            _rec(9.0, [1.0], ok=False)]
    m = compute_level_metrics(recs, duration_s=2.0, slo=SLO(ttft_ms=250, tpot_ms=30))
    ok = recs[:4]
    assert m["completed"] == 4 and m["failed"] == 1
    assert m["total_output_tokens"] == 5 + 10 + 1 + 3 and m["total_input_tokens"] == 40
    assert m["output_throughput"] == pytest.approx(19 / 2.0)
    assert m["total_token_throughput"] == pytest.approx(59 / 2.0)
    assert m["request_throughput"] == pytest.approx(2.0)
    ttfts = np.array([r.ttft for r in ok]) * 1000
    tpots = np.array([0.02, 0.01, 0.05]) * 1000  # the 1-token request has no TPOT
    itls = np.array([x for r in ok for x in r.itl]) * 1000
    e2els = np.array([r.latency for r in ok]) * 1000
    for name, arr in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        assert m[f"mean_{name}_ms"] == pytest.approx(arr.mean())
        assert m[f"median_{name}_ms"] == pytest.approx(np.median(arr))
        for p in (95, 99):
            assert m[f"p{p}_{name}_ms"] == pytest.approx(np.percentile(arr, p))
    # goodput: ttft <= 250 and tpot <= 30 -> requests 0 (100 ms, 20 ms) and 2 (200 ms, tpot 0): 2 good
    assert m["request_goodput"] == pytest.approx(2 / 2.0)
    assert m["good_fraction"] == pytest.approx(2 / 5)
    assert request_tpot(recs[2]) == 0.0
    assert m["errors"] == ["boom"]


def test_slo_parse_and_stability():
    slo = SLO.parse("ttft_ms=2000,tpot:80")
    assert (slo.ttft_ms, slo.tpot_ms, slo.e2el_ms, slo.percentile) == (2000, 80, None, 95)
    with pytest.raises(ValueError, match="ttft_ms, tpot_ms, e2el_ms"):
        SLO.parse("latency=3")
    with pytest.raises(ValueError, match="percentile"):
        SLO.parse("ttft_ms=1", percentile=42)
    lv = {"completed": 4, "failed": 0, "num_preemptions": 0, "p95_ttft_ms": 100.0, "p95_tpot_ms": 90.0}
    assert not meets_slo(lv, slo)
    assert meets_slo({**lv, "p95_tpot_ms": 80.0}, slo)
    levels = [{**lv, "concurrency": 1, "p95_tpot_ms": 10.0}, {**lv, "concurrency": 2, "p95_tpot_ms": 20.0},
              {**lv, "concurrency": 4, "p95_tpot_ms": 20.0, "num_preemptions": 3},
              {**lv, "concurrency": 8, "p95_tpot_ms": 20.0}]
    assert max_stable_concurrency(levels, slo) == 2  # c=4 preempted; c=8 does not count after a break
    assert not is_stable({**lv, "p95_tpot_ms": 1.0, "failed": 1}, slo)


# The fake server's schedule: request i -> TTFT t_i, then n_i - 1 gaps of g_i (ms).
SCHEDULE = [(100, 10, 6), (200, 20, 4), (300, 10, 8), (400, 30, 3), (500, 20, 5)]
TOL_MS = 12.0  # OS sleep/scheduling jitter between chunks (TPOT, ITL)
TOL_START_MS = 45.0  # + connection setup and thread start on a loaded 2-core box (TTFT, E2EL); values are 100 ms apart


@pytest.fixture()
def fake_url():
    srv, url = start_in_thread(FakeConfig(model="m", capacity_tokens=10_000))
    yield url
    srv.shutdown()


def test_client_against_fake_server_percentiles_tpot_goodput(fake_url):
    sessions = [Session([Turn(f"hello there fake_ttft_ms={t} fake_itl_ms={g}", n)], session_id=str(i))
                for i, (t, g, n) in enumerate(SCHEDULE)]
    wl = Workload("timed", sessions)
    res, dur = asyncio.run(run_closed_loop(fake_url, "m", wl, concurrency=len(SCHEDULE)))
    assert all(r.success for r in res), [r.error for r in res]
    slo = SLO(ttft_ms=250.0, tpot_ms=15.0)  # bounds halfway between scheduled values -> exact counts
    m = compute_level_metrics(res, dur, slo)
    ttft = np.array([t for t, _, _ in SCHEDULE], float)
    tpot = np.array([g for _, g, _ in SCHEDULE], float)
    e2el = np.array([t + g * (n - 1) for t, g, n in SCHEDULE], float)
    # exact counts
    assert m["completed"] == 5 and m["failed"] == 0
    assert m["total_output_tokens"] == sum(n for _, _, n in SCHEDULE)
    assert m["total_input_tokens"] == 5 * 4  # prompts are 4 words; the fake counts words
    assert sum(len(r.itl) for r in res) == sum(n - 1 for _, _, n in SCHEDULE)
    assert m["request_goodput"] * dur == pytest.approx(1.0)  # only request 0: ttft 100 <= 250, tpot 10 <= 15
    assert m["good_fraction"] == pytest.approx(1 / 5)
    # timings match the schedule within the OS jitter
    for name, arr, tol in (("ttft", ttft, TOL_START_MS), ("tpot", tpot, TOL_MS), ("e2el", e2el, TOL_START_MS)):
        assert m[f"mean_{name}_ms"] == pytest.approx(arr.mean(), abs=tol)
        assert m[f"median_{name}_ms"] == pytest.approx(np.median(arr), abs=tol)
        for p in (95, 99):
            assert m[f"p{p}_{name}_ms"] == pytest.approx(np.percentile(arr, p), abs=tol)
    # per request, TTFT order follows the schedule exactly
    by_prompt = sorted(res, key=lambda r: r.ttft)
    assert [r.output_tokens for r in by_prompt] == [n for _, _, n in SCHEDULE]
    itl_expected = np.concatenate([[g] * (n - 1) for _, g, n in SCHEDULE]).astype(float)
    assert m["median_itl_ms"] == pytest.approx(np.median(itl_expected), abs=TOL_MS)
    assert m["output_throughput"] == pytest.approx(m["total_output_tokens"] / dur)


def test_client_records_http_errors_as_failures(fake_url):
    wl = Workload("bad", [Session([Turn("x", 3)])])
    res, dur = asyncio.run(run_closed_loop(fake_url, "wrong-model", wl, concurrency=1))
    assert len(res) == 1 and not res[0].success and "HTTP 404" in res[0].error
    m = compute_level_metrics(res, dur)
    assert m["completed"] == 0 and m["failed"] == 1 and m["output_throughput"] == 0


def test_multi_turn_sessions_grow_their_history(fake_url):
    from kvarn.bench.workloads import TextSource, _FALLBACK_TEXT, build_workload

    wl = build_workload("long-context-agent", TextSource(_FALLBACK_TEXT), num_sessions=2, turns=3, scale=0.05)
    res, dur = asyncio.run(run_closed_loop(fake_url, "m", wl, concurrency=2))
    assert len(res) == 6 and all(r.success for r in res)
    for sid in {r.session_id for r in res}:
        turns = sorted((r for r in res if r.session_id == sid), key=lambda r: r.turn)
        lens = [r.prompt_len for r in turns]
        # each turn's prompt = previous prompt + the reply (its output words) + the new observation
        assert all(b > a + t.output_tokens for a, b, t in zip(lens, lens[1:], turns))
