"""A simulated vLLM schedule for the backend's step-logic tests: requests of random lengths, a token
budget per step split into random chunks (decode, chunked prefill, whole prompts), blocks handed out
from a free list as positions cross block boundaries, and finished requests releasing their blocks."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SimStep:
    batch: list  # [(request id, new tokens)]
    slot_mapping: np.ndarray  # [T] block * G + offset
    first: np.ndarray  # [B] each request's first block
    qsl: list  # [B + 1] query start locations
    seq_lens: list  # [B] cached + new tokens
    key: torch.Tensor  # [T, Hkv, D] (the requests' K rows at the new positions)
    value: torch.Tensor
    table: list  # [B][width] block table rows, padded with ``pad``


def schedule_step(reqs: dict, free_blocks: list, g: int, budget: int, chunks: list, pad: int = -1,
                  width: int = 8) -> SimStep:
    """reqs: rid -> {"total", "done", "blocks", "k", "v"}; takes a random chunk of each request in turn
    until ``budget`` tokens, appending blocks to reqs[rid]["blocks"] as needed ("done" is not advanced)."""
    batch, left = [], budget
    for rid, r in reqs.items():
        n = min(left, r["total"] - r["done"], random.choice(chunks))
        if n > 0:
            batch.append((rid, n))
            left -= n
    slot_mapping, first, qsl, seq_lens, keys, vals, table = [], [], [0], [], [], [], []
    for rid, n in batch:
        r = reqs[rid]
        for pos in range(r["done"], r["done"] + n):
            if pos // g >= len(r["blocks"]):
                r["blocks"].append(free_blocks.pop())
            slot_mapping.append(r["blocks"][pos // g] * g + pos % g)
        first.append(r["blocks"][0])
        keys.append(r["k"][r["done"]: r["done"] + n])
        vals.append(r["v"][r["done"]: r["done"] + n])
        qsl.append(qsl[-1] + n)
        seq_lens.append(r["done"] + n)
        table.append(r["blocks"] + [pad] * (width - len(r["blocks"])))
    return SimStep(batch, np.array(slot_mapping), np.array(first), qsl, seq_lens, torch.cat(keys), torch.cat(vals),
                   table)


def retire_finished(reqs: dict, pool, free_blocks: list) -> None:
    """Release the blocks of every request whose "done" reached "total" (as vLLM frees them) and drop it."""
    for rid in [rid for rid, r in reqs.items() if r["done"] == r["total"]]:
        pool.release(reqs[rid]["blocks"])
        free_blocks.extend(reqs.pop(rid)["blocks"])


def step_path_setup(sink: str, lengths: list, device="cpu", use_kernels=False, num_blocks: int = 48, slots: int = 24):
    """The shared state of the step-path tests: seeds everything from a fresh seed, then builds a k4v2_g64 layer
    at head_dim 64 with 2 KV heads (its SlotPool, LayerCache, empty records, a shuffled free list) and requests of
    ``lengths`` tokens with random K/V. Returns (seed, cfg, pool, cache, records, free_blocks, reqs)."""
    from kvarn.config import KvarnConfig
    from kvarn.vllm_plugin.layer_cache import LayerCache
    from kvarn.vllm_plugin.pool import SlotPool

    seed = torch.seed() % 2**31
    random.seed(seed)
    torch.manual_seed(seed)
    cfg = KvarnConfig.from_name("k4v2_g64", head_dim=64, sink=sink)
    hkv, d = 2, 64
    pool = SlotPool(slots, cfg.group, retire_sinks=True, fp16_sink=sink == "fp16",
                    sink_rows=cfg.group if cfg.token_sink else 0)
    cache = LayerCache(cfg, hkv, pool.total_slots, device=device, use_kernels=use_kernels)
    records = torch.zeros(num_blocks, hkv, cfg.record_bytes, dtype=torch.uint8, device=device)
    free_blocks = list(range(num_blocks))
    random.shuffle(free_blocks)
    reqs = {rid: {"total": n, "done": 0, "blocks": [], "k": torch.randn(n, hkv, d) * 2, "v": torch.randn(n, hkv, d)}
            for rid, n in enumerate(lengths)}
    return seed, cfg, pool, cache, records, free_blocks, reqs
