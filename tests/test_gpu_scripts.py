"""GPU-host tooling that runs without a GPU: the Nsight Compute stall summary and the burst driver's arm specs."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))


def test_ncu_stalls_summarizes_the_recorded_profile():
    import ncu_stalls
    rows = ncu_stalls.load(str(ROOT / "benchmarks/gpu/results/h200-decode-2026-11-30b/ncu_records_sass.csv.gz"))
    assert len(rows) > 1000 and "stall_long_sb" in rows[0]
    text = ncu_stalls.summarize(rows, top=5).splitlines()
    assert text[0] == "75005 warp-state samples"
    assert text[1].split() == ["long_sb", "36.5%"]  # the profile's finding (docs/gpu.md, 2026-11-30)
    hot = text[text.index("hottest instructions") + 1]
    assert "STS.U16" in hot and hot.strip().startswith("6.6%")


def test_gpu_bursts_passes_arm_env_and_logs_gpu_state(tmp_path):
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "nvidia-smi").write_text('#!/bin/bash\necho "$2, 1980 MHz, 3201 MHz, 45, 300.00 W, 0x0"\n')
    (stub / "python3").write_text('#!/bin/bash\necho "ARGS $* PREFETCH=${KVARN_DECODE_PREFETCH:-unset} '
                                  'GPU=$CUDA_VISIBLE_DEVICES"\n')
    for f in stub.iterdir():
        f.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, PATH=f"{stub}:{os.environ['PATH']}", OUT=str(out), LANES="0 1")
    arms = "kvarn_k4v2_g128:KVARN_DECODE_PREFETCH=0 kvarn_k4v2_g128:KVARN_DECODE_PREFETCH=1 auto"
    res = subprocess.run(["bash", str(ROOT / "scripts/gpu_bursts.sh"), "M", arms, "--bursts", "A"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    logs = {p.name: p.read_text() for p in out.iterdir()}
    assert set(logs) == {"bursts_kvarn_k4v2_g128_KVARN_DECODE_PREFETCH_0.log",
                         "bursts_kvarn_k4v2_g128_KVARN_DECODE_PREFETCH_1.log", "bursts_auto.log"}
    one = logs["bursts_kvarn_k4v2_g128_KVARN_DECODE_PREFETCH_1.log"].splitlines()
    assert one[0].startswith("gpu_state ") and one[-1].startswith("gpu_state ") and "1980 MHz" in one[0]
    assert "kvarn_k4v2_g128 --json" in one[1] and "PREFETCH=1 GPU=1" in one[1] and "--bursts A" in one[1]
    assert "PREFETCH=0 GPU=0" in logs["bursts_kvarn_k4v2_g128_KVARN_DECODE_PREFETCH_0.log"]
    assert "M auto --json" in logs["bursts_auto.log"] and "PREFETCH=unset GPU=0" in logs["bursts_auto.log"]


def test_probe_variant_names_parse_to_launcher_arguments():
    import pytest
    probe = pytest.importorskip("probe_decode_shapes")
    assert probe.variant_kwargs("ahead=2+prefetch=1") == {"ahead": 2, "prefetch": 1}
    assert probe.variant_kwargs("q_rows=8+maxnreg=None") == {"min_q_rows": 8, "maxnreg": None}
    assert probe.variant_kwargs("num_stages=2") == {"num_stages": 2}  # a named one
    with pytest.raises(SystemExit, match="unknown variant 'fast=1'.*ahead"):
        probe.variant_kwargs("fast=1")


def test_probe_base_variants_pick_their_kernel_file():
    import pytest
    probe = pytest.importorskip("probe_decode_shapes")
    assert probe.base_file("a.py", "base") == "a.py"
    assert probe.base_file("a.py,b.py", "base2:ahead=2") == "b.py"
    with pytest.raises(SystemExit, match="base3.*at least 3"):
        probe.base_file("a.py,b.py", "base3")


def test_burst_driver_engine_options_parse_and_reject_a_short_model_len():
    import pytest
    bursts = pytest.importorskip("bench_vllm_bursts")
    a = bursts.parse(["M", "kvarn_k4v2_g128", "--max-model-len", "8464", "--max-graph-size", "1024"])
    assert (a.max_model_len, a.max_graph_size) == (8464, 1024)
    assert bursts.parse(["M", "auto"]).max_graph_size is None
    with pytest.raises(SystemExit, match="shorter than the bursts need .2064."):
        bursts.main(["M", "auto", "--bursts", "A", "--max-model-len", "1024"])


def test_probe_base_variant_settings_follow_the_colon():
    import pytest
    probe = pytest.importorskip("probe_decode_shapes")
    assert probe.variant_kwargs("base") == {} and probe.variant_kwargs("base2") == {}
    assert probe.variant_kwargs("base2:ahead=2+prefetch=1") == {"ahead": 2, "prefetch": 1}
    assert probe.variant_kwargs("base:maxnreg=168") == {"maxnreg": 168}
