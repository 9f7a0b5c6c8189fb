"""Per-step timing and a kernel profile of an in-process vLLM engine (GPU host, vLLM 0.26).

Used by ``bench_vllm_bursts.py --steps``. The engine must run in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set by that script before vLLM is imported) so the engine core's
``step_fn`` and its scheduler can be wrapped:

* every step records its wall time, the tokens it scheduled and the requests it ran. A step whose
  token count equals its request count is a pure decode step; anything else carries prefill. With async
  scheduling (vLLM's default) a call that schedules nothing only waits on the batch in flight: its time is
  added to the previous step, so the step times sum to the engine's busy time;
* ``profile_window(start, count, kind)`` arms a ``torch.profiler`` trace over steps ``start``..``start +
  count - 1`` of the next burst, counting decode steps (kind "decode") or steps that carry prefill
  ("prefill"), and the trace is summarized as GPU kernel time per step, grouped by kernel family (GEMM,
  attention, kvarn write/flush, elementwise, other), plus the top kernels by time.
"""

import re
import statistics
import time

FAMILIES = (  # first match wins; names are CUDA kernel symbols as the profiler reports them
    ("kvarn_decode", r"_kvarn_decode_kernel|_combine_kernel"),
    ("kvarn_flush", r"_flush_kernel"),
    ("kvarn_write", r"_rotate_append_kernel"),
    ("attention_other", r"flash|fmha|attn|attention|paged|reshape_and_cache"),
    ("gemm", r"gemm|gemv|cutlass|xmma|nvjet|sm90_|cublas|matmul|splitk"),
    ("norm_act_rope", r"rms|norm|silu|act_and_mul|rotary|rope"),
    ("sampling", r"sort|topk|top_k|softmax|sample|argmax|multinomial|cumsum|scatter|gather"),
)


def family(name: str) -> str:
    low = name.lower()
    for fam, pat in FAMILIES:
        if re.search(pat, low):
            return fam
    return "other"


class StepRecorder:
    """Wraps ``core.step_fn`` and ``core.scheduler.schedule`` of an in-process EngineCore."""

    def __init__(self, llm):
        client = llm.llm_engine.engine_core
        core = getattr(client, "engine_core", None)
        if core is None or not hasattr(core, "step_fn"):
            raise RuntimeError(f"--steps needs an in-process engine core, got {type(client).__name__}; "
                               "set VLLM_ENABLE_V1_MULTIPROCESSING=0 before importing vllm")
        self.records: list[dict] = []
        self._last_sched = (0, 0)
        self._window = None  # (start, count, kind): steps of that kind ("decode" or "prefill") of the burst
        self._seen = {"decode": 0, "prefill": 0}
        self._prof = None
        self.profile: dict | None = None
        sched, step_fn = core.scheduler.schedule, core.step_fn

        def schedule(*args, **kw):
            out = sched(*args, **kw)
            self._last_sched = (int(out.total_num_scheduled_tokens), len(out.num_scheduled_tokens))
            return out

        def timed_step():
            self._maybe_start()
            t0 = time.perf_counter()
            res = step_fn()
            dt = time.perf_counter() - t0
            tokens, reqs = self._last_sched
            self._last_sched = (0, 0)
            if not tokens and self.records:  # async scheduling: a call that only waited on the previous batch
                self.records[-1]["ms"] += dt
            elif tokens:
                decode = tokens == reqs
                self.records.append(dict(ms=dt * 1e3, tokens=tokens, reqs=reqs, decode=decode))
                self._seen["decode" if decode else "prefill"] += 1
                self._maybe_stop()
            return res

        core.scheduler.schedule = schedule
        core.step_fn = timed_step

    def begin_burst(self) -> None:
        self.records, self._seen = [], {"decode": 0, "prefill": 0}

    def profile_window(self, start: int, count: int, kind: str = "decode") -> None:
        if kind not in self._seen:
            raise ValueError(f"profile window kind must be decode or prefill, got {kind!r}")
        self._window = (start, count, kind)

    def _maybe_start(self):
        if self._window and self._prof is None and self._seen[self._window[2]] == self._window[0]:
            import torch
            from torch.profiler import ProfilerActivity, profile
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.synchronize()
            self._prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []))
            self._prof.__enter__()
            self._prof_t0, self._prof_steps = time.perf_counter(), len(self.records)

    def _maybe_stop(self):
        if self._prof is None or self._seen[self._window[2]] < self._window[0] + self._window[1]:
            return
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - self._prof_t0) * 1e3
        steps = self.records[self._prof_steps:]
        self._prof.__exit__(None, None, None)
        self.profile = summarize(self._prof, steps, wall_ms)
        self._prof, self._window = None, None

    def summary(self) -> dict:
        return summarize_steps(self.records)


def summarize_steps(records: list[dict]) -> dict:
    dec = [r for r in records if r["decode"]]
    pre = [r for r in records if not r["decode"]]
    batch_max = max((r["reqs"] for r in dec), default=0)
    full = [r["ms"] for r in dec if r["reqs"] >= 0.9 * batch_max]
    return dict(
        steps=len(records), decode_steps=len(dec), prefill_steps=len(pre),
        decode_ms_total=round(sum(r["ms"] for r in dec), 1), prefill_ms_total=round(sum(r["ms"] for r in pre), 1),
        decode_batch_max=batch_max,
        decode_batch_median=statistics.median([r["reqs"] for r in dec]) if dec else 0,
        decode_step_ms_median_at_full_batch=round(statistics.median(full), 2) if full else None,
        decode_steps_at_full_batch=len(full),
    )


def summarize(prof, steps: list[dict], wall_ms: float, top: int = 20) -> dict:
    """Kernel time of a profiled window: per family and top kernels, in ms per step."""
    n = max(len(steps), 1)
    kernels: dict[str, tuple[float, int]] = {}  # key_averages() already holds one entry per kernel name
    for evt in prof.key_averages():
        if str(evt.device_type).endswith("CUDA"):  # kernels only; CPU ops would count their kernels twice
            dev_us = float(max(evt.self_device_time_total or 0.0, evt.device_time_total or 0.0))
            kernels[evt.key] = (dev_us, int(evt.count))
    fams: dict[str, float] = {}
    for name, (us, _) in kernels.items():
        fam = family(name)
        fams[fam] = fams.get(fam, 0.0) + us
    gpu_ms = sum(fams.values()) / 1e3
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:top]
    return dict(
        steps=len(steps), batch=[s["reqs"] for s in steps], tokens=[s.get("tokens") for s in steps],
        wall_ms_per_step=round(wall_ms / n, 2),
        step_ms_recorded=[round(s["ms"], 2) for s in steps],
        gpu_kernel_ms_per_step=round(gpu_ms / n, 2),
        family_ms_per_step={k: round(v / 1e3 / n, 3) for k, v in sorted(fams.items(), key=lambda kv: -kv[1])},
        top_kernels=[dict(name=k[:120], family=family(k), ms_per_step=round(us / 1e3 / n, 3), calls_per_step=c / n)
                     for k, (us, c) in ranked],
    )


def format_profile(p: dict) -> str:
    lines = [f"profile: {p['steps']} steps, batch {p['batch'][0]}-{p['batch'][-1]}, tokens "
             f"{p.get('tokens', ['?'])[0]}-{p.get('tokens', ['?'])[-1]}, "
             f"wall {p['wall_ms_per_step']} ms/step, GPU kernels {p['gpu_kernel_ms_per_step']} ms/step"]
    lines += [f"  {k:16s} {v:8.3f} ms/step" for k, v in p["family_ms_per_step"].items()]
    lines += [f"  {t['ms_per_step']:8.3f} ms  x{t['calls_per_step']:.0f}  [{t['family']}] {t['name']}"
              for t in p["top_kernels"]]
    return "\n".join(lines)
