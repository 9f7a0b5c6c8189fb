"""kvarn plan against the H200 measurements in shared/baselines.md (Qwen3-8B shape, vLLM 0.26, util 0.90,
offline LLM class: max_num_batched_tokens 16384, max_num_seqs 1024)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kvarn.plan.advisor import make_plan
from kvarn.plan.formats import get_format
from kvarn.plan.gpus import get_gpu
from kvarn.plan.memory import capacity
from kvarn.plan.model import load_model
from kvarn.plan.workloads import build_workload

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Copied from shared/baselines.md (checked against the file when it is present).
CAPACITY = {"bf16": 791_792, "fp8": 1_583_600, "int4_per_token_head": 2_980_912}
BURST_A = {"bf16": 7_626, "fp8": 10_035, "int4_per_token_head": 4_459}  # 768 x (1024 + 1024)
BURST_B = {"bf16": 2_078, "fp8": 2_140, "int4_per_token_head": 939}  # 16 x (2048 + 512)
QWEN3_4B_BF16_CAPACITY = 850_352
QWEN3_4B_BF16_TOK_S = 15_177  # 256 x (512 + 512)
SPEC_A, SPEC_B = "burst:768:1024:1024", "burst:16:2048:512"
OFFLINE = dict(max_num_batched_tokens=16384, max_num_seqs=1024)


def _model_paths() -> list[str]:
    paths = ["qwen3-8b"]  # the copy shipped in src/kvarn/data/models
    if (SHARED / "models" / "qwen3-8b" / "config.json").is_file():
        paths.append(str(SHARED / "models" / "qwen3-8b"))
    return paths


@pytest.fixture(scope="module")
def h200():
    return get_gpu("h200")


def test_embedded_numbers_match_baselines_md():
    md = SHARED / "baselines.md"
    if not md.is_file():
        pytest.skip("shared/baselines.md not beside the repo")
    rows = {}
    for line in md.read_text().splitlines():
        m = re.match(r"\| (auto \(bf16\)|fp8|int4_per_token_head) \|[^|]*"
                     r"\| ([\d,]+) \|[^|]*\| ([\d,]+) \|[^|]*\| ([\d,]+) \|", line)
        if m:
            key = "bf16" if m.group(1).startswith("auto") else m.group(1)
            rows[key] = tuple(int(g.replace(",", "")) for g in m.groups()[1:])
    assert rows == {k: (CAPACITY[k], BURST_A[k], BURST_B[k]) for k in CAPACITY}
    assert "850,352 tokens capacity, 15,177 output tok/s" in md.read_text()


def test_shipped_config_matches_shared():
    shared = SHARED / "models" / "qwen3-8b" / "config.json"
    if not shared.is_file():
        pytest.skip("shared/models not beside the repo")
    assert load_model(str(shared)).to_dict() | {"name": ""} == load_model("qwen3-8b").to_dict() | {"name": ""}


@pytest.mark.parametrize("model", _model_paths())
@pytest.mark.parametrize("fmt", sorted(CAPACITY))
def test_capacity_within_5_percent(h200, model, fmt):
    shape = load_model(model)
    cap = capacity(h200, shape, get_format(fmt, shape.head_dim), tp=1, util=0.9, **OFFLINE)
    assert abs(cap.capacity_tokens / CAPACITY[fmt] - 1) < 0.05, (cap.capacity_tokens, CAPACITY[fmt])


def test_capacity_qwen3_4b_row(h200):
    """The same reserve constants (derived from the 8B bf16 row) predict the 4B row."""
    shape = load_model("qwen3-4b")
    cap = capacity(h200, shape, get_format("bf16", 128), 1, 0.9, **OFFLINE)
    assert abs(cap.capacity_tokens / QWEN3_4B_BF16_CAPACITY - 1) < 0.05


def _plan(h200, spec):
    return make_plan(h200, load_model("qwen3-8b"), build_workload(spec), tp=1, util=0.9, mode="offline",
                     formats=["bf16", "fp8", "int4_per_token_head"])


@pytest.mark.parametrize("spec,measured", [(SPEC_A, BURST_A), (SPEC_B, BURST_B)])
def test_throughput_ordering_matches_measured(h200, spec, measured):
    plan = _plan(h200, spec)
    pred = {f["format"]: f["output_tok_s"] for f in plan["formats"]}
    assert sorted(measured, key=measured.get) == sorted(pred, key=pred.get)
    for k in measured:  # not fitted per row, but every prediction should be in the right neighbourhood
        assert abs(pred[k] / measured[k] - 1) < 0.2, (spec, k, pred[k], measured[k])


def test_bursts_on_opposite_branches(h200):
    a, b = _plan(h200, SPEC_A)["decision"], _plan(h200, SPEC_B)["decision"]
    assert a["memory_pressure"] and a["branch"] == "memory-pressure"
    assert not b["memory_pressure"] and b["branch"] != "memory-pressure"
    # burst A: bf16 holds about 386 of the 768 requests at once (baselines.md)
    bf16 = next(f for f in _plan(h200, SPEC_A)["formats"] if f["format"] == "bf16")
    assert bf16["resident_seqs"] == 386
    assert a["try_first"] == "fp8" and b["try_first"] == "bf16"


def test_qwen3_4b_throughput_is_predicted_not_fitted(h200):
    """No constant was taken from this row: a different model shape, predicted within 20%."""
    plan = make_plan(h200, load_model("qwen3-4b"), build_workload("burst:256:512:512"), mode="offline",
                     formats=["bf16"])
    assert abs(plan["formats"][0]["output_tok_s"] / QWEN3_4B_BF16_TOK_S - 1) < 0.2


# kvarn's own H200 runs (benchmarks/gpu/results/h200-vllm-bursts-2026-11-29 and h200-split-cap-2026-11-30 for
# capacity, h200-layout-2026-11-30d for the bursts with the current decode kernel; same method as baselines.md)
KVARN_CAPACITY = {1024: 2_391_680, 256: 3_347_968}  # tokens, max_num_seqs -> vLLM's KV cache size
KVARN_BURST_A, KVARN_BURST_B = 10_614.6, 2_044.0  # out tok/s (vLLM's default CUDA-graph sizes, as the planner)


@pytest.mark.parametrize("seqs", [1024, 256])
def test_kvarn_capacity_with_pool_matches_h200_run(h200, seqs):
    shape = load_model("qwen3-8b")
    cap = capacity(h200, shape, get_format("kvarn_k4v2_g128", 128), 1, 0.9, max_num_batched_tokens=16384,
                   max_num_seqs=seqs, cap_pool=False)
    assert cap.capacity_tokens == pytest.approx(KVARN_CAPACITY[seqs], rel=0.05)


@pytest.mark.parametrize("spec,measured", [(SPEC_A, KVARN_BURST_A), (SPEC_B, KVARN_BURST_B)])
def test_kvarn_throughput_within_15_percent_of_h200_run(h200, spec, measured):
    plan = make_plan(h200, load_model("qwen3-8b"), build_workload(spec), tp=1, util=0.9, mode="offline",
                     formats=["bf16", "kvarn_k4v2_g128"], **OFFLINE)
    row = next(f for f in plan["formats"] if f["format"] == "kvarn_k4v2_g128")
    assert row["output_tok_s"] == pytest.approx(measured, rel=0.15)
