"""Roofline estimates of one decode step and of one request's prefill, per GPU of a TP group.

Decode step with n sequences at mean context c (B = HBM bytes/s, F = dense bf16 FLOP/s)::

    t_linear = max(W_step / (B * GEMM_BW_EFF), 2 * N_active * n / (F * MFU_DECODE))     W_step: weight bytes / tp
    t_attn   = max(KV_read / (B * fmt.attn_eff * occ), 4 * n * c * L * Hq * D / (F * MFU_ATTN))
               KV_read = n * c * bytes_per_token(fmt)      (kvarn: sink + half-full tail read as fp16)
               occ = min(1, n * Hk * splits / (SMs * CTAS_PER_SM))   splits = 1 without split-KV,
                     else enough 256-token splits to fill the GPU
    t_flush  = n * L * Hk / G * fmt.flush_s_per_tile            (kvarn: one tile completes every G steps)
    t_allreduce = 2 * L * (AR_LATENCY + 2 * n * h * 2 B * (tp-1)/tp / link)          (tp > 1)
    t_step   = t_linear + t_attn + t_flush + t_allreduce + STEP_OVERHEAD + n * SEQ_OVERHEAD (+ kvarn's builder)

Prefill of P new tokens after c0 cached ones, in chunks of S = min(P, max_num_batched_tokens)::

    t_prefill = 2 * N_active * P / (F * MFU_PREFILL)
              + 4 * L * Hq * D * P * S/2 / (F * MFU_ATTN * fmt.prefill_eff)                      (within a chunk)
              + 4 * L * Hq * D * P * (c0 + (P - S)/2) / (F * MFU_ATTN * fmt.prefill_eff * fmt.cached_prefill_eff)
              + (kvarn) P * L * Hk / G * fmt.flush_s_per_tile
    (the second attention term: positions cached before the chunk, prefix hits and the prompt's earlier chunks;
    the two terms add up to the causal 4 L Hq D P (c0 + P/2))

The efficiency constants are global (one set for every format and row). The bandwidth/MFU values are
priors; STEP_OVERHEAD_S and SEQ_OVERHEAD_S were fitted once to the two bf16 rows of shared/baselines.md
(bursts A and B) with FA3_ATTN_EFF fixed a priori, so the fp8 rows are predictions. See docs/plan.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvarn.plan.formats import KVFormat
from kvarn.plan.gpus import GPU
from kvarn.plan.model import ModelShape

GEMM_BW_EFF = 0.85  # weight streaming in decode GEMMs, fraction of peak HBM bandwidth (prior)
MFU_DECODE = 0.60  # prior
MFU_PREFILL = 0.60  # prior (~590 of 989 TFLOP/s; the H200 sustains ~790 on large GEMMs)
MFU_ATTN = 0.40  # prior
STEP_OVERHEAD_S = 0.5e-3  # scheduler + sampler + launch per engine step (fitted to bf16 rows)
SEQ_OVERHEAD_S = 11e-6  # per sequence per step: input prep, sampling, outputs (fitted to bf16 rows)
AR_LATENCY_S = 12e-6  # one all-reduce's fixed latency
CTAS_PER_SM = 3  # resident decode-attention CTAs per SM needed to saturate HBM
SPLIT_TOKENS = 256  # smallest context chunk a split-KV kernel hands one CTA


@dataclass
class StepTime:
    linear: float
    attn: float
    flush: float
    allreduce: float
    overhead: float

    @property
    def total(self) -> float:
        return self.linear + self.attn + self.flush + self.allreduce + self.overhead

    def to_dict(self) -> dict:
        return {k: round(v * 1e3, 4) for k, v in
                (("linear_ms", self.linear), ("attn_ms", self.attn), ("flush_ms", self.flush),
                 ("allreduce_ms", self.allreduce), ("overhead_ms", self.overhead), ("total_ms", self.total))}


def kv_read_bytes_per_seq(shape: ModelShape, fmt: KVFormat, tp: int, ctx: float) -> float:
    """HBM bytes one sequence's decode attention reads at context ``ctx`` (all layers, one GPU)."""
    heads = shape.kv_heads_per_gpu(tp)
    if fmt.family == "kvarn":
        g = fmt.block_size
        # the sink block (unless quantized) plus, on average, a half-full tail block
        fp16_tokens = min(ctx, (0.5 + fmt.kvarn.first_quantized_tile) * g)
        per_layer = fp16_tokens * 4 * shape.head_dim + (ctx - fp16_tokens) * fmt.bytes_per_token_head
        return heads * shape.num_layers * per_layer
    return ctx * fmt.layer_bytes_per_token(shape.num_layers, heads, shape.head_dim)


def _allreduce(gpu: GPU, shape: ModelShape, tp: int, tokens: float) -> float:
    if tp <= 1:
        return 0.0
    vol = 2 * tokens * shape.hidden * 2 * (tp - 1) / tp
    return 2 * shape.num_layers * (AR_LATENCY_S + vol / (gpu.link_gbs * 1e9))


def attn_occupancy(gpu: GPU, shape: ModelShape, fmt: KVFormat, tp: int, n: int, ctx: float) -> float:
    """Share of the GPU a decode-attention launch keeps busy: one CTA per (sequence, KV head, split)."""
    ctas = n * shape.kv_heads_per_gpu(tp)
    full = gpu.sms * CTAS_PER_SM
    if fmt.split_kv and ctas < full:
        ctas *= min(max(1, int(ctx // SPLIT_TOKENS)), -(-full // ctas))
    return min(1.0, ctas / full)


def decode_step(gpu: GPU, shape: ModelShape, fmt: KVFormat, tp: int, n: int, ctx: float) -> StepTime:
    """Time of one decode step of ``n`` sequences at mean context ``ctx``."""
    bw, fl = gpu.bw_bytes_s, gpu.flops
    w = shape.weight_bytes_read_per_step(n) / tp
    t_lin = max(w / (bw * GEMM_BW_EFF), 2 * shape.params_active / tp * n / (fl * MFU_DECODE))
    kv = n * kv_read_bytes_per_seq(shape, fmt, tp, ctx)
    hq = max(1, shape.num_heads // tp)
    occ = attn_occupancy(gpu, shape, fmt, tp, n, ctx)
    t_attn = max(kv / (bw * fmt.attn_eff * occ), 4 * n * ctx * shape.num_layers * hq * shape.head_dim / (fl * MFU_ATTN))
    t_flush = 0.0
    if fmt.family == "kvarn":
        t_flush = n * shape.num_layers * shape.kv_heads_per_gpu(tp) / fmt.block_size * fmt.flush_s_per_tile
    overhead = STEP_OVERHEAD_S + n * SEQ_OVERHEAD_S + fmt.step_overhead_s
    return StepTime(t_lin, t_attn, t_flush, _allreduce(gpu, shape, tp, n), overhead)


def prefill_time(gpu: GPU, shape: ModelShape, fmt: KVFormat, tp: int, new_tokens: float, cached: float = 0.0,
                 chunk: float | None = None) -> float:
    """Compute time to prefill ``new_tokens`` after ``cached`` prefix-cached tokens (one request), in chunks of
    ``chunk`` tokens (max_num_batched_tokens; None = one chunk)."""
    fl = gpu.flops
    hq = max(1, shape.num_heads // tp)
    t = 2 * shape.params_active / tp * new_tokens / (fl * MFU_PREFILL)
    s = new_tokens if not chunk else min(new_tokens, chunk)
    per_pos = 4 * shape.num_layers * hq * shape.head_dim * new_tokens  # attention FLOPs per attended position
    t += per_pos * s / 2 / (fl * MFU_ATTN * fmt.prefill_eff)
    t += per_pos * (cached + (new_tokens - s) / 2) / (fl * MFU_ATTN * fmt.prefill_eff * fmt.cached_prefill_eff)
    t += _allreduce(gpu, shape, tp, new_tokens)
    if fmt.family == "kvarn":
        t += new_tokens * shape.num_layers * shape.kv_heads_per_gpu(tp) / fmt.block_size * fmt.flush_s_per_tile
    return t
