"""KV capacity: what vLLM leaves for the KV cache on one GPU, and how many tokens a format fits there.

Per GPU (tensor parallelism ``tp`` splits weights, MLP activations and KV heads)::

    kv_memory = util * total - weights / tp - activation_peak - RESERVE_BYTES
    activation_peak = T * 2 B * (3 * I / tp + 2 * h)     T = max_num_batched_tokens (vLLM's profile run:
                      gate_up output [T, 2I] + act output [T, I] + hidden and residual [T, h], bf16)
    capacity_tokens = floor(kv_memory / (block * bytes_per_token_all_layers)) * block

RESERVE_BYTES (CUDA-graph pool estimate + non-torch memory such as cuBLAS workspaces) is derived ONCE
from the bf16 row of shared/baselines.md (Qwen3-8B, H200, util 0.90, T = 16384, 791,792 tokens):
    0.9 * 150,109,880,320 - 16,381,470,720 (weights) - 791,792 * 147,456 (KV) = 1,962,940,416 B
    minus activation_peak = 16384 * 2 * (3 * 12288 + 2 * 4096) = 1,476,395,008 B
    => RESERVE_BYTES = 486,545,408 B (0.45 GiB).
The same constants then predict the fp8 and int4 rows and the Qwen3-4B row (tests/test_plan_baselines.py).

kvarn formats also allocate the fp16 sink/tail pool per attention layer (``kvarn.config.total_pool_slots``
slots: sink/tail slots plus token-sink rows), counted against kv_memory (the vLLM plugin allocates it before
the memory profiler runs, so vLLM's printed KV size already excludes it). As upstream does, the planner caps
max_num_seqs so that the pool stays within ``POOL_BUDGET_FRAC * (util * total - weights)``; the plugin does not
cap, so the report tells which --max-num-seqs to pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kvarn.config import pool_bytes_per_layer, total_pool_slots

from kvarn.plan.formats import KVFormat
from kvarn.plan.gpus import GPU
from kvarn.plan.model import ModelShape

RESERVE_BYTES = 486_545_408
POOL_BUDGET_FRAC = 0.5


def activation_peak_bytes(shape: ModelShape, tp: int, max_num_batched_tokens: int) -> int:
    """Peak activation memory of vLLM's profiling forward pass of ``max_num_batched_tokens`` tokens."""
    return int(max_num_batched_tokens * 2 * (3 * shape.mlp_width // tp + 2 * shape.hidden))


def kv_memory_bytes(gpu: GPU, shape: ModelShape, tp: int, util: float, max_num_batched_tokens: int) -> float:
    """Bytes vLLM hands the KV cache on each GPU (negative when the model does not fit)."""
    if not 0.0 < util <= 1.0:
        raise ValueError(f"gpu memory utilization must be in (0, 1], got {util}")
    return (util * gpu.memory_bytes - shape.weight_bytes / tp
            - activation_peak_bytes(shape, tp, max_num_batched_tokens) - RESERVE_BYTES)


@dataclass
class Capacity:
    format: str
    bytes_per_token: float  # all layers, this GPU's KV heads
    kv_memory_bytes: float  # what vLLM gives the KV cache on one GPU
    pool_bytes: float  # kvarn fp16 sink/tail pool (0 for other formats), inside kv_memory_bytes
    pool_slots: int
    max_num_seqs: int  # effective (kvarn: capped by the pool budget)
    capacity_tokens: int  # tokens the cache holds per replica (quantized records only for kvarn)
    fits: bool
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def kvarn_pool_bytes(shape: ModelShape, fmt: KVFormat, tp: int, max_num_seqs: int, mbt: int) -> tuple[int, int]:
    """(slots, bytes over all layers) of the kvarn fp16 pool on one GPU (fmt: a supported kvarn format)."""
    slots = total_pool_slots(fmt.kvarn, max_num_seqs, mbt)
    return slots, shape.num_layers * pool_bytes_per_layer(slots, fmt.block_size, shape.kv_heads_per_gpu(tp),
                                                          shape.head_dim)


def capacity(
    gpu: GPU,
    shape: ModelShape,
    fmt: KVFormat,
    tp: int = 1,
    util: float = 0.9,
    max_num_batched_tokens: int = 8192,
    max_num_seqs: int = 1024,
    cap_pool: bool = True,
) -> Capacity:
    """KV capacity of ``fmt`` on one replica (``tp`` GPUs). ``cap_pool=False`` keeps max_num_seqs as given
    even when the kvarn pool exceeds its budget (what a server started with that value allocates)."""
    heads = shape.kv_heads_per_gpu(tp)
    bpt = fmt.layer_bytes_per_token(shape.num_layers, heads, shape.head_dim)
    mem = kv_memory_bytes(gpu, shape, tp, util, max_num_batched_tokens)
    if not fmt.supported:
        return Capacity(fmt.name, bpt, mem, 0, 0, 0, 0, False, fmt.why_unsupported)
    if mem <= 0:
        return Capacity(fmt.name, bpt, mem, 0, 0, 0, 0, False,
                        f"weights + activations exceed {util:.2f} x GPU memory at tp={tp}")
    pool, slots, seqs, note = 0.0, 0, max_num_seqs, ""
    if fmt.family == "kvarn":
        budget = POOL_BUDGET_FRAC * (util * gpu.memory_bytes - shape.weight_bytes / tp)
        slots, pool = kvarn_pool_bytes(shape, fmt, tp, seqs, max_num_batched_tokens)
        while cap_pool and seqs > 1 and pool > budget:
            seqs = max(1, int(seqs * budget / pool) - 1)
            slots, pool = kvarn_pool_bytes(shape, fmt, tp, seqs, max_num_batched_tokens)
        if seqs < max_num_seqs:
            note = (f"max_num_seqs capped {max_num_seqs} -> {seqs} so the pool stays within "
                    f"{POOL_BUDGET_FRAC:.0%} of free memory")
    block_bytes = fmt.block_size * bpt
    blocks = int((mem - pool) // block_bytes) if mem > pool else 0
    tokens = blocks * fmt.block_size
    return Capacity(fmt.name, bpt, mem, pool, slots, seqs, tokens, tokens > 0, note)
