"""Per-format predictions for one workload: concurrency reached, throughput, latency, cost.

For a format with capacity K tokens (one replica) and a workload with mean prompt P, output O and
final context P + O, the scheduler keeps ``n = min(target, max_num_seqs, floor(K / (P + O)))`` sequences
resident (``target`` = burst size or concurrent users). One engine step then costs::

    T(n) = t_step(n, c_dec) + (n / O) * t_prefill(P)        (prefill of arrivals, amortized per step)
    output tok/s = n / T(n)            (closed loop and bursts; the burst runs N / n "waves")
    TPOT ~ T(n);  TTFT ~ queue wait + ceil(P / max_num_batched_tokens) * T(n) + t_prefill(P)
    (burst queue wait: (waves - 1) * service / 2 + (n - 1) * t_prefill / 2)

With an arrival rate λ (open loop) n solves Little's law n = λ (O T(n) + t_prefill) by fixed-point
iteration; if λ O exceeds the saturated rate the format is marked saturated.

Memory pressure (the flowchart's first question) means the bf16 cache cannot hold the workload's
resident set: target * (P + O) > K_bf16 (or max_num_seqs binds). Under pressure a smaller format buys
concurrency; without it, quantization only pays where KV reads dominate a decode step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from kvarn.plan.formats import KVFormat
from kvarn.plan.gpus import GPU
from kvarn.plan.memory import Capacity, capacity
from kvarn.plan.model import ModelShape
from kvarn.plan.roofline import decode_step, kv_read_bytes_per_seq, prefill_time
from kvarn.plan.workloads import Workload


@dataclass
class Prediction:
    format: str
    family: str
    supported: bool
    bytes_per_token_head: float
    capacity_tokens: int
    capacity_x_bf16: float
    pool_gib: float
    max_num_seqs: int
    resident_seqs: int  # sequences resident at once for this workload
    fit_seqs: int  # sequences of mean length that fit (capacity and max_num_seqs)
    fits_workload: bool  # the whole target concurrency fits at once
    waves: float  # target / resident (1.0 = no queueing)
    est_preemptions: int
    step_ms: float  # decode step incl. amortized prefill, at resident_seqs
    step_breakdown: dict
    output_tok_s: float  # per replica (tp GPUs)
    output_tok_s_x_bf16: float
    tpot_ms: float
    ttft_ms: float
    saturated: bool
    cost_per_mtok_usd: float
    gpus_for_target: int | None  # GPUs to hold target sessions at target context (None: does not fit)
    note: str

    def to_dict(self) -> dict:
        return asdict(self)


def _round(x: float, nd: int = 3) -> float:
    return float(round(x, nd)) if math.isfinite(x) else x


def predict_format(
    gpu: GPU,
    shape: ModelShape,
    fmt: KVFormat,
    wl: Workload,
    tp: int = 1,
    util: float = 0.9,
    max_num_batched_tokens: int = 8192,
    max_num_seqs: int = 1024,
    gpu_price: float | None = None,
    target_sessions: int | None = None,
    target_context: int | None = None,
    bf16_capacity: int | None = None,
    pool_seqs: int | None = None,
    cap_pool: bool = True,
) -> tuple[Prediction, Capacity]:
    """Predict one format on one replica of ``tp`` GPUs. ``pool_seqs``: sequences the kvarn fp16 pool is
    sized for (default: the workload's target concurrency, within max_num_seqs)."""
    target = wl.target_concurrency if not wl.request_rate else max_num_seqs  # open loop: as many as needed
    seqs = max_num_seqs
    if fmt.family == "kvarn":  # size the fp16 pool for the sequences the workload needs, not for 1024
        seqs = min(max_num_seqs, max(8, int(math.ceil((pool_seqs or target) / 8)) * 8))
    cap = capacity(gpu, shape, fmt, tp, util, max_num_batched_tokens, seqs, cap_pool)
    price = gpu.price_per_hour if gpu_price is None else gpu_price
    x_bf16 = cap.capacity_tokens / bf16_capacity if bf16_capacity else float("nan")
    empty = dict(step_ms=float("nan"), step_breakdown={}, output_tok_s=0.0, output_tok_s_x_bf16=float("nan"),
                 tpot_ms=float("nan"), ttft_ms=float("nan"), saturated=True, cost_per_mtok_usd=float("nan"),
                 gpus_for_target=None)
    base = dict(format=fmt.name, family=fmt.family, supported=fmt.supported,
                bytes_per_token_head=fmt.bytes_per_token_head, capacity_tokens=cap.capacity_tokens,
                capacity_x_bf16=_round(x_bf16), pool_gib=_round(cap.pool_bytes / 2**30),
                max_num_seqs=cap.max_num_seqs)
    p, o = wl.mean_prompt, wl.mean_output
    final_ctx = wl.mean_final_context
    if not cap.fits or cap.capacity_tokens < wl.percentile_context(1.0):
        why = cap.note or f"capacity {cap.capacity_tokens} < longest request {wl.percentile_context(1.0)}"
        return Prediction(**base, resident_seqs=0, fit_seqs=0, fits_workload=False, waves=float("inf"),
                          est_preemptions=0, note=why, **empty), cap
    fit = min(cap.max_num_seqs, int(cap.capacity_tokens // final_ctx))
    n = max(1, min(target, fit))
    new_tokens = p * (1.0 - wl.prefix_hit_frac)
    t_pre = prefill_time(gpu, shape, fmt, tp, new_tokens, p - new_tokens, max_num_batched_tokens)
    c_dec = wl.mean_decode_context

    def step_total(k: int) -> tuple[float, dict]:
        st = decode_step(gpu, shape, fmt, tp, k, c_dec)
        pre = (k / o) * t_pre
        return st.total + pre, {**st.to_dict(), "prefill_amortized_ms": round(pre * 1e3, 4),
                                "step_with_prefill_ms": round((st.total + pre) * 1e3, 4)}

    saturated = False
    if wl.request_rate:
        lam = wl.request_rate
        t_sat, _ = step_total(n)
        if lam * o >= n / t_sat:
            saturated = True
        else:
            k = 1.0
            for _ in range(200):
                t, _ = step_total(max(1, math.ceil(k)))
                k_new = lam * (o * t + t_pre)
                if abs(k_new - k) < 1e-3:
                    break
                k = min(k_new, n)
            n = max(1, min(n, math.ceil(k)))
    t_step, breakdown = step_total(n)
    tok_s = n / t_step if not wl.request_rate or saturated else min(n / t_step, wl.request_rate * o)
    waves = target / n if not wl.request_rate else 1.0
    admitted = min(target, cap.max_num_seqs, int(cap.capacity_tokens // max(p + fmt.block_size, 1)))
    preempt = max(0, admitted - n) * (math.ceil(target / admitted) if admitted else 0) if target > n else 0
    chunks = math.ceil(max(new_tokens, 1) / max_num_batched_tokens)
    service = t_pre + o * t_step
    if wl.burst:  # waves queue behind each other; inside a wave prompts are prefilled in arrival order
        wait = (waves - 1) * service / 2 + (n - 1) * t_pre / 2
    else:
        wait = max(0.0, waves - 1) * service
    ttft = wait + chunks * t_step + t_pre
    gpus = None
    tgt_s = target_sessions or (n if wl.request_rate else target)
    tgt_c = target_context or int(round(final_ctx))
    per_replica = min(cap.max_num_seqs, cap.capacity_tokens // max(tgt_c, 1))
    if per_replica >= 1:
        gpus = math.ceil(tgt_s / per_replica) * tp
    cost = price * tp / 3600.0 / tok_s * 1e6 if tok_s > 0 else float("inf")
    return Prediction(
        **base, resident_seqs=n, fit_seqs=fit, fits_workload=fit >= target, waves=_round(waves),
        est_preemptions=int(preempt),
        step_ms=_round(t_step * 1e3), step_breakdown=breakdown, output_tok_s=_round(tok_s, 1),
        output_tok_s_x_bf16=float("nan"), tpot_ms=_round(t_step * 1e3), ttft_ms=_round(ttft * 1e3, 1),
        saturated=saturated, cost_per_mtok_usd=_round(cost), gpus_for_target=gpus, note=cap.note,
    ), cap


def kv_share_of_step(gpu: GPU, shape: ModelShape, fmt: KVFormat, tp: int, n: int, ctx: float) -> float:
    """Fraction of a decode step's HBM bytes that are KV reads (the rest: weights)."""
    kv = n * kv_read_bytes_per_seq(shape, fmt, tp, ctx)
    w = shape.weight_bytes_read_per_step(n) / tp
    return kv / (kv + w)
