"""The step recorder behind ``bench_vllm_bursts.py --steps/--profile`` (benchmarks/gpu/step_profile.py),
driven by a stand-in engine core: decode/prefill classification, async-scheduling waits folded into
the previous step, the summary fields, and kernel-family names as the CUDA profiler reports them."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"))
import step_profile  # noqa: E402


class FakeCore:
    """schedule() returns the next (tokens, {req: n}) of a script; step_fn() calls schedule unless told to wait."""

    def __init__(self, script):
        self.script = list(script)
        self.scheduler = SimpleNamespace(schedule=self._schedule)
        self.step_fn = self._step

    def _schedule(self):
        tokens, reqs = self.script.pop(0)
        return SimpleNamespace(total_num_scheduled_tokens=tokens, num_scheduled_tokens={i: 1 for i in range(reqs)})

    def _step(self):
        if self.script and self.script[0] is not None:
            self.scheduler.schedule()
        elif self.script:
            self.script.pop(0)  # None: an async-scheduling call that only waits on the batch in flight
        return {}, True


def make(script):
    core = FakeCore(script)
    llm = SimpleNamespace(llm_engine=SimpleNamespace(engine_core=SimpleNamespace(engine_core=core)))
    return core, step_profile.StepRecorder(llm)


def test_steps_classified_and_waits_folded():
    # prefill step (600 tokens, 3 requests), a wait, then three decode steps of 3 requests and one of 1
    core, rec = make([(600, 3), None, (3, 3), (3, 3), (3, 3), (1, 1)])
    for _ in range(6):
        core.step_fn()
    assert [r["decode"] for r in rec.records] == [False, True, True, True, True]  # the wait adds no step
    s = rec.summary()
    assert (s["steps"], s["decode_steps"], s["prefill_steps"]) == (5, 4, 1)
    assert s["decode_batch_max"] == 3 and s["decode_steps_at_full_batch"] == 3
    assert s["decode_step_ms_median_at_full_batch"] is not None and s["decode_step_ms_median_at_full_batch"] >= 0
    rec.begin_burst()
    assert rec.summary()["steps"] == 0


def test_needs_an_in_process_engine():
    llm = SimpleNamespace(llm_engine=SimpleNamespace(engine_core=SimpleNamespace()))  # a multiprocess client
    with pytest.raises(RuntimeError, match="VLLM_ENABLE_V1_MULTIPROCESSING=0"):
        step_profile.StepRecorder(llm)


@pytest.mark.parametrize("name,family", [
    ("_kvarn_decode_kernel", "kvarn_decode"), ("_combine_kernel", "kvarn_decode"), ("_flush_kernel", "kvarn_flush"),
    ("_rotate_append_kernel", "kvarn_write"),
    ("void cutlass::device_kernel<flash::enable_sm90_or_later<flash::FlashAttnFwdSm90<...>>", "attention_other"),
    ("nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_TNN", "gemm"), ("triton_poi_fused_mul_silu_slice_1", "norm_act_rope"),
    ("_gumbel_sample_kernel", "sampling"), ("Memset (Device)", "other"),
])
def test_kernel_families(name, family):
    assert step_profile.family(name) == family


def test_summarize_counts_kernels_once_per_step():
    """Kernel events only (a CPU op's device time is its kernels' again), per traced step, by family."""
    ev = [SimpleNamespace(device_type="DeviceType.CUDA", key="_kvarn_decode_kernel", self_device_time_total=3000.0,
                          device_time_total=3000.0, count=6),
          SimpleNamespace(device_type="DeviceType.CUDA", key="nvjet_sm90_x", self_device_time_total=1200.0,
                          device_time_total=1200.0, count=12),
          SimpleNamespace(device_type="DeviceType.CPU", key="aten::mm", self_device_time_total=0.0,
                          device_time_total=1200.0, count=12)]
    p = step_profile.summarize(SimpleNamespace(key_averages=lambda: ev), [dict(reqs=4, ms=1.0)] * 2, wall_ms=10.0)
    assert p["family_ms_per_step"] == {"kvarn_decode": 1.5, "gemm": 0.6}
    assert p["gpu_kernel_ms_per_step"] == 2.1 and p["wall_ms_per_step"] == 5.0
    top = [(t["name"], t["calls_per_step"]) for t in p["top_kernels"]]
    assert top == [("_kvarn_decode_kernel", 3), ("nvjet_sm90_x", 6)]
    assert "GPU kernels 2.1 ms/step" in step_profile.format_profile(p)


def test_prefill_window_counts_steps_that_carry_prefill():
    """A prefill window opens once START steps carrying prefill have run and closes when COUNT more have
    (steps in between are traced too); the real torch.profiler, CPU only."""
    core, rec = make([(600, 3), (3, 3), (500, 3), (3, 3), (400, 2), (3, 1)])
    rec.profile_window(1, 2, "prefill")
    for _ in range(6):
        core.step_fn()
    assert rec.profile is not None and rec.profile["batch"] == [3, 3, 3, 2]  # records 1-4: through prefill #3
    with pytest.raises(ValueError, match="decode or prefill"):
        rec.profile_window(0, 1, "chunk")


def test_profile_spec_parses_decode_and_prefill_windows():
    import bench_vllm_bursts
    assert bench_vllm_bursts.parse_profile("A@8+6") == ("A", 8, 6, "decode")
    assert bench_vllm_bursts.parse_profile("P@p4+3") == ("P", 4, 3, "prefill")
    with pytest.raises(SystemExit, match="NAME@START"):
        bench_vllm_bursts.parse_profile("P@x")
