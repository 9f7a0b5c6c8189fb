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
