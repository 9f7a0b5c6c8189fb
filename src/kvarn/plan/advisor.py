"""The plan: every format's prediction, the flowchart branch, what quantization buys, what to try first.

Flowchart (README "mental model": requests -> prefill -> KV grows with context -> under memory pressure
quantization frees room; without it, it only adds work)::

    Q1  does the bf16 cache hold the workload's resident set, target * (P + O) tokens?
        no  -> branch "memory-pressure": a smaller format buys concurrency (fewer waves and preemptions)
               or longer context; pick the fastest predicted format that is not lossy beyond tier 2.
        yes -> Q2  are KV reads at least half of a bf16 decode step's HBM bytes?
               yes -> branch "kv-bandwidth": fewer KV bytes shorten every step, if the kernel keeps up;
                      fp8 first (FA3, near free), kvarn only where predicted faster.
               no  -> branch "no-pressure": quantization only adds work; try bf16 first (fp8 only if memory
                      is wanted for something else).

Quality tiers (lower is safer; from method.md §3): 0 = exact (bf16/fp16), 1 = near-lossless (fp8,
turboquant_k8v4, int8_per_token_head, kvarn_k4v4_*), 2 = about one point on reasoning evals (kvarn_k4v2_*,
turboquant_4bit_nc, int4_per_token_head), 3 = visible loss (turboquant_k3v4_nc, turboquant_3bit_nc,
kvarn_k2v2_*).
"""

from __future__ import annotations

import math

from kvarn.plan.formats import DEFAULT_COMPARE, get_format
from kvarn.plan.gpus import GPU, vllm_batch_defaults
from kvarn.plan.model import ModelShape
from kvarn.plan.predict import Prediction, kv_share_of_step, predict_format
from kvarn.plan.workloads import Workload

SCHEMA_VERSION = 1
MAX_TIER = 2  # formats above this tier are shown but never recommended
WIN_MARGIN = 1.03  # a quantized format must beat the safer choice by 3% to be recommended


def quality_tier(name: str) -> int:
    n = name.lower()
    if n in ("bf16", "fp16"):
        return 0
    if n in ("fp8", "turboquant_k8v4", "int8_per_token_head") or n.startswith("kvarn_k4v4"):
        return 1
    if n.startswith("kvarn_k4v2") or n in ("turboquant_4bit_nc", "int4_per_token_head"):
        return 2
    return 3


def make_plan(
    gpu: GPU,
    shape: ModelShape,
    wl: Workload,
    tp: int = 1,
    util: float = 0.9,
    formats: list[str] | None = None,
    max_model_len: int | None = None,
    max_num_batched_tokens: int | None = None,
    max_num_seqs: int | None = None,
    mode: str = "serve",
    gpu_price: float | None = None,
    target_sessions: int | None = None,
    target_context: int | None = None,
    kvarn_attn_eff: float | None = None,
    kvarn_flush_us: float | None = None,
) -> dict:
    """Predict every format for one workload and decide the branch. Returns the --json document."""
    if tp < 1:
        raise ValueError(f"--tp must be >= 1, got {tp}")
    mbt_d, seqs_d = vllm_batch_defaults(gpu, mode)
    mbt = max_num_batched_tokens or mbt_d
    seqs = max_num_seqs or seqs_d
    warnings = []
    if max_model_len is not None and wl.percentile_context(1.0) > max_model_len:
        warnings.append(f"some requests exceed --max-model-len {max_model_len}; vLLM would reject them")
    if shape.sliding_window:
        warnings.append("the model uses sliding-window attention; the planner counts every layer as full attention")
    names = list(formats or DEFAULT_COMPARE)
    if "bf16" not in names:
        names.insert(0, "bf16")
    fmts = [get_format(n, shape.head_dim, kvarn_attn_eff, kvarn_flush_us, shape.q_heads_per_kv) for n in names]
    kw = dict(tp=tp, util=util, max_num_batched_tokens=mbt, max_num_seqs=seqs, gpu_price=gpu_price,
              target_sessions=target_sessions, target_context=target_context)
    base, base_cap = predict_format(gpu, shape, fmts[names.index("bf16")], wl, **kw)
    preds: list[Prediction] = []
    pool_seqs = None
    if wl.request_rate and base.resident_seqs:  # open loop: size the kvarn pool for bf16's in-flight count + 25%
        pool_seqs = int(math.ceil(base.resident_seqs * 1.25))
    for f in fmts:
        p, _ = predict_format(gpu, shape, f, wl, bf16_capacity=base_cap.capacity_tokens or None,
                              pool_seqs=pool_seqs, **kw)
        if base.output_tok_s > 0 and p.output_tok_s > 0:
            p.output_tok_s_x_bf16 = round(p.output_tok_s / base.output_tok_s, 3)
        preds.append(p)
    decision = decide(gpu, shape, wl, tp, base, preds)
    kv = next((p for p in preds if p.format == "kvarn_k4v2_g128" and p.output_tok_s > 0), None)
    if kv is not None and not wl.request_rate:
        fmt = get_format("kvarn_k4v2_g128", shape.head_dim, None, kvarn_flush_us, shape.q_heads_per_kv)
        rivals = {p.format: p.output_tok_s for p in preds if p.format in ("bf16", "fp8") and p.output_tok_s > 0}
        decision["kvarn_k4v2_g128_attn_eff_to_match"] = {
            k: breakeven_attn_eff(gpu, shape, fmt, wl, v, dict(kw, pool_seqs=None)) for k, v in rivals.items()}
    return {
        "schema_version": SCHEMA_VERSION,
        "inputs": {
            "model": shape.to_dict(), "gpu": gpu.to_dict(), "tp": tp, "gpu_mem_util": util,
            "max_num_batched_tokens": mbt, "max_num_seqs": seqs, "mode": mode, "max_model_len": max_model_len,
            "gpu_price_per_hour": gpu.price_per_hour if gpu_price is None else gpu_price,
            "target_sessions": target_sessions or (base.resident_seqs if wl.request_rate else wl.target_concurrency),
            "target_context": target_context or int(round(wl.mean_final_context)),
            "kvarn_attn_eff": kvarn_attn_eff, "kvarn_flush_us": kvarn_flush_us,
        },
        "workload": wl.summary(),
        "memory": {
            "kv_memory_gib_per_gpu": round(base_cap.kv_memory_bytes / 2**30, 3),
            "weights_gib_per_gpu": round(shape.weight_bytes / tp / 2**30, 3),
        },
        "formats": [p.to_dict() for p in preds],
        "decision": decision,
        "warnings": warnings,
    }


def decide(gpu: GPU, shape: ModelShape, wl: Workload, tp: int, base: Prediction, preds: list[Prediction]) -> dict:
    """Flowchart branch, what quantization buys or costs, and the format to try first."""
    cap = base.capacity_tokens
    if wl.request_rate:  # open loop: the resident set is what Little's law gives bf16 (all it fits if saturated)
        target = base.resident_seqs if not base.saturated else max(base.fit_seqs + 1, base.resident_seqs)
        memory_bound = cap <= 0 or (base.saturated and base.fit_seqs < base.max_num_seqs)
    else:
        target = wl.target_concurrency
    need = target * wl.mean_final_context
    if not wl.request_rate:
        memory_bound = cap <= 0 or need > cap
    n0 = max(1, base.resident_seqs)
    kv_share = kv_share_of_step(gpu, shape, get_format("bf16", shape.head_dim), tp, n0, wl.mean_decode_context)
    if cap <= 0:
        branch = "memory-pressure"
        why = (f"bf16 cannot serve even one request at tp={tp}: {base.note}; "
               f"smallest tensor-parallel size that leaves KV memory: {min_tp(gpu, shape, tp)}")
    elif memory_bound:
        branch = "memory-pressure"
        why = (f"{target} sequences x {wl.mean_final_context:.0f} tokens = {need:,.0f} tokens > bf16 capacity "
               f"{cap:,} tokens: bf16 runs {base.waves:.2f} waves of {base.resident_seqs} sequences")
    elif kv_share >= 0.5:
        branch = "kv-bandwidth"
        why = (f"the working set fits ({need:,.0f} of {cap:,} tokens) but KV reads are {kv_share:.0%} of a decode "
               "step's bytes: fewer KV bytes shorten every step if the kernel keeps up")
    else:
        branch = "no-pressure"
        why = (f"the working set fits ({need:,.0f} of {cap:,} tokens, {need / max(cap, 1):.0%}) and KV reads are "
               f"{kv_share:.0%} of a decode step: quantization frees memory nobody needs and only adds work")
    ok = [p for p in preds if p.supported and p.output_tok_s > 0]
    buys = []
    for p in ok:
        if p.format == "bf16":
            continue
        ctx_per_seq = p.capacity_tokens // max(target, 1)
        buys.append({
            "format": p.format, "capacity_x_bf16": p.capacity_x_bf16,
            "extra_resident_seqs": p.resident_seqs - base.resident_seqs,
            "context_per_seq_at_target": int(ctx_per_seq),
            "waves": p.waves, "preemptions_avoided": base.est_preemptions - p.est_preemptions,
            "throughput_x_bf16": p.output_tok_s_x_bf16,
            "verdict": ("buys throughput" if (p.output_tok_s_x_bf16 or 0) >= WIN_MARGIN else
                        "costs throughput" if (p.output_tok_s_x_bf16 or 0) < 1 / WIN_MARGIN else "about even"),
        })
    # recommendation: best score within MAX_TIER; a lower-tier (safer) one wins unless beaten by WIN_MARGIN.
    # score: output tok/s; in open loop (rate) an unsaturated format delivers the offered load, so 1/TPOT.
    def score(p: Prediction) -> float:
        if wl.request_rate:
            return 1e3 / p.tpot_ms if not p.saturated and p.tpot_ms else p.output_tok_s * 1e-9
        return p.output_tok_s

    cands = sorted((p for p in ok if quality_tier(p.format) <= MAX_TIER),
                   key=lambda p: (quality_tier(p.format), -score(p)))
    best = None
    for p in cands:
        if best is None or score(p) > score(best) * WIN_MARGIN:
            best = p
    if branch == "no-pressure":  # nothing to free: stay exact; any predicted gain is within the model's error
        best = next((p for p in cands if p.format == "bf16"), best)
    first = best.format if best else None
    alt = [p.format for p in sorted(ok, key=lambda p: -score(p)) if p.format != first][:3]
    return {
        "branch": branch,
        "memory_pressure": memory_bound,
        "why": why,
        "bf16_capacity_tokens": cap,
        "working_set_tokens": int(need),
        "kv_share_of_decode_bytes": round(kv_share, 3),
        "try_first": first,
        "then": alt,
        "quantization_buys": buys,
    }


def breakeven_attn_eff(gpu: GPU, shape: ModelShape, fmt, wl: Workload, tok_s: float, kw: dict) -> float | None:
    """Smallest decode-kernel bandwidth efficiency at which ``fmt`` reaches ``tok_s`` (None: not even at 1.0)."""
    import dataclasses

    def rate(eff: float) -> float:
        return predict_format(gpu, shape, dataclasses.replace(fmt, attn_eff=eff), wl, **kw)[0].output_tok_s

    if rate(1.0) < tok_s:
        return None
    lo, hi = 1e-3, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rate(mid) < tok_s else (lo, mid)
    return round(hi, 3)


def min_tp(gpu: GPU, shape: ModelShape, tp: int, util: float = 0.9) -> int | None:
    """Smallest power-of-two tp (>= the given one, <= 64) whose per-GPU KV memory holds 1 GiB."""
    from kvarn.plan.memory import kv_memory_bytes

    t = max(1, tp)
    while t <= 64:
        if kv_memory_bytes(gpu, shape, t, util, 8192) > 2**30:
            return t
        t *= 2
    return None
