"""Reference causal GQA attention over a kvarn paged cache (the CPU path and the kernels' oracle).

Cache state of one attention layer:
  kv_cache      uint8 [num_blocks, Hkv, R]       one tile record per (block, KV head)
  pool_k/pool_v fp16  [num_slots, G, Hkv, D]     rotated rows of blocks that live in the fp16 pool
  block_to_slot int   [num_blocks]               -1: the block is a quantized record; else its slot

A request r with ``seq_lens[r]`` tokens and ``q_len`` new tokens (queries) sees
  * context positions [0, seq_len - q_len) from the cache (pool rows or decoded records),
  * its own new positions [seq_len - q_len, seq_len) from ``key``/``value`` (lossless), causally.
Attention runs in the rotated frame: q_rot = q H, o = softmax(q_rot K_rot^T * scale) V_rot H.
Shapes follow vLLM: query [T, Hq, D], key/value [T, Hkv, D], output [T, Hq, D].
"""

from __future__ import annotations

import torch

from kvarn.config import KvarnConfig
from kvarn.reference.codec import decode_tiles
from kvarn.reference.hadamard import rotate


def gather_kv(
    block_ids: torch.Tensor,
    num_tokens: int,
    kv_cache: torch.Tensor,
    pool_k: torch.Tensor,
    pool_v: torch.Tensor,
    block_to_slot: torch.Tensor,
    cfg: KvarnConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated K/V [num_tokens, Hkv, D] (fp32) of one request's first ``num_tokens`` positions.

    block_ids [>= ceil(num_tokens / G)]: the request's block table row.
    """
    g = cfg.group
    n_blocks = -(-num_tokens // g)
    hkv, d = kv_cache.shape[1], cfg.head_dim
    if n_blocks == 0:
        empty = torch.zeros(0, hkv, d, device=kv_cache.device)
        return empty, empty.clone()
    ids = block_ids[:n_blocks].long()
    slots = block_to_slot[ids].long()
    k = torch.empty(n_blocks, g, hkv, d, device=kv_cache.device)
    v = torch.empty_like(k)
    in_pool = slots >= 0
    if in_pool.any():
        k[in_pool] = pool_k[slots[in_pool]].float()
        v[in_pool] = pool_v[slots[in_pool]].float()
    quant = ~in_pool
    if quant.any():
        recs = kv_cache[ids[quant]]  # [nq, Hkv, R]
        kq, vq = decode_tiles(recs.reshape(-1, recs.shape[-1]), cfg)  # [nq*Hkv, G, D]
        k[quant] = kq.reshape(-1, hkv, g, d).transpose(1, 2)
        v[quant] = vq.reshape(-1, hkv, g, d).transpose(1, 2)
    return k.reshape(-1, hkv, d)[:num_tokens], v.reshape(-1, hkv, d)[:num_tokens]


def gqa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, q_offset: int
) -> torch.Tensor:
    """Causal GQA attention in fp32. q [Tq, Hq, D], k/v [Tk, Hkv, D]; query i sits at absolute
    position q_offset + i and sees keys j <= q_offset + i. Returns [Tq, Hq, D]."""
    tq, hq, d = q.shape
    tk, hkv, _ = k.shape
    if hq % hkv:
        raise ValueError(f"query heads {hq} must be a multiple of KV heads {hkv}")
    rep = hq // hkv
    qf = q.float().reshape(tq, hkv, rep, d).permute(1, 2, 0, 3)  # [Hkv, rep, Tq, D]
    kf = k.float().permute(1, 0, 2)[:, None]  # [Hkv, 1, Tk, D]
    vf = v.float().permute(1, 0, 2)[:, None]
    scores = (qf @ kf.transpose(-1, -2)) * scale  # [Hkv, rep, Tq, Tk]
    pos_q = torch.arange(tq, device=q.device)[:, None] + q_offset
    pos_k = torch.arange(tk, device=q.device)[None, :]
    scores = scores.masked_fill(pos_k > pos_q, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ vf  # [Hkv, rep, Tq, D]
    return out.permute(2, 0, 1, 3).reshape(tq, hq, d)


def paged_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    kv_cache: torch.Tensor,
    pool_k: torch.Tensor,
    pool_v: torch.Tensor,
    block_to_slot: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    cfg: KvarnConfig,
    scale: float,
) -> torch.Tensor:
    """Decode, prefill and chunked prefill over a kvarn cache. Returns fp32 [T, Hq, D] (original frame).

    query [T, Hq, D], key/value [T, Hkv, D] (new tokens, original frame); block_table [B, M];
    seq_lens [B] (context + new tokens); query_start_loc [B + 1] (CPU ints).
    """
    qsl = query_start_loc.tolist()
    lens = seq_lens.tolist()
    out = torch.empty(query.shape, dtype=torch.float32, device=query.device)
    for r in range(len(lens)):
        s, e = qsl[r], qsl[r + 1]
        if e == s:
            continue
        ctx = lens[r] - (e - s)
        if ctx < 0:
            raise ValueError(f"request {r}: seq_len {lens[r]} < query length {e - s}")
        k_ctx, v_ctx = gather_kv(block_table[r], ctx, kv_cache, pool_k, pool_v, block_to_slot, cfg)
        k_all = torch.cat([k_ctx, rotate(key[s:e])], 0)
        v_all = torch.cat([v_ctx, rotate(value[s:e])], 0)
        o_rot = gqa_attention(rotate(query[s:e]), k_all, v_all, scale, q_offset=ctx)
        out[s:e] = rotate(o_rot)
    return out
