"""Reference causal GQA attention over a kvarn paged cache (the CPU path and the kernels' oracle).

Cache state of one attention layer:
  kv_cache      uint8 [num_blocks, Hkv, R]       one tile record per (block, KV head)
  pool_k/pool_v fp16  [num_slots, G, Hkv, D]     rotated rows of blocks that live in the fp16 pool
  block_to_slot int   [num_blocks]               -1: the block is a quantized record; >= 0: its slot;
                                                 <= -2: a record whose row 0 is the fp16 pool row -2 - value
                                                 (pool_k.reshape(-1, Hkv, D), sink "token")

Cache-consistent semantics (the same for decode, prefill and chunked prefill): the query at position
p sees key/value j <= p
  * quantized (encoded, then decoded) when j lies in a complete tile other than tile 0 and before p's
    own tile: exactly what the cache holds for it once that tile is flushed;
  * in fp16 (the pool's rotated rows) when j lies in tile 0 (the sink) or in p's own tile.
With ``cfg.sink == "quantized"`` tile 0 follows the first rule like every other tile
(``cfg.first_quantized_tile`` = 0); with ``cfg.sink == "token"`` too, except position 0 itself, which is
always read in fp16 (once tile 0 is a record, from its sink row: ``block_to_slot`` = -2 - flat pool row).
Context positions [0, seq_len - q_len) come from the cache; the new positions from ``key``/``value``,
quantized in-step where the rule asks for it. So a request's output does not depend on how its prompt
was chunked or whether a prefix came from the prefix cache (vLLM's prefix caching on == off).
Attention runs in the rotated frame: q_rot = q H, o = softmax(q_rot K_rot^T * scale) V_rot H.
Shapes follow vLLM: query [T, Hq, D], key/value [T, Hkv, D], output [T, Hq, D].
"""

from __future__ import annotations

import torch

from kvarn.config import KvarnConfig
from kvarn.reference.codec import decode_tiles, encode_tiles
from kvarn.reference.hadamard import rotate


def gather_tiles(
    block_ids: torch.Tensor,
    kv_cache: torch.Tensor,
    pool_k: torch.Tensor,
    pool_v: torch.Tensor,
    block_to_slot: torch.Tensor,
    cfg: KvarnConfig,
    dtype: torch.dtype = torch.float32,
    no_sync: bool = False,
    tiles_per_pass: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated K/V tiles [n, G, Hkv, D] in ``dtype`` of the blocks block_ids [n] (any requests, any order):
    a block with a pool slot (block_to_slot >= 0) as its fp16 rows are stored, every other block's record
    decoded (decode_tiles), with row 0 from its sink row where block_to_slot <= -2 (cfg.token_sink).
    no_sync=True (the GPU serving path): nothing waits on the host; every page is
    decoded, in passes of at most ``tiles_per_pass`` tiles (bounded fp32 temporaries), and a select keeps the
    pool rows (a pool block's stale page is decoded and dropped). Otherwise only the records are decoded,
    picked by boolean masks (a host sync on a GPU; free on the CPU)."""
    g, hkv, d = cfg.group, kv_cache.shape[1], cfg.head_dim
    ids = block_ids.long()
    slots = block_to_slot.index_select(0, ids).long()
    k = torch.empty(ids.shape[0], g, hkv, d, dtype=dtype, device=kv_cache.device)
    v = torch.empty_like(k)

    def decoded(sel):  # records of ids[sel] -> K, V [n, G, Hkv, D]
        kq, vq = decode_tiles(kv_cache.index_select(0, ids[sel]).reshape(-1, kv_cache.shape[-1]), cfg)
        return (x.reshape(-1, hkv, g, d).transpose(1, 2) for x in (kq, vq))

    if no_sync:
        for a in range(0, ids.shape[0], tiles_per_pass):
            part = slice(a, a + tiles_per_pass)
            in_pool = (slots[part] >= 0)[:, None, None, None]
            rows = slots[part].clamp(min=0)
            for out, deq, pool in zip((k, v), decoded(part), (pool_k, pool_v)):
                out[part] = torch.where(in_pool, pool.index_select(0, rows).to(dtype), deq.to(dtype))
            if cfg.token_sink:
                has = (slots[part] <= -2)[:, None, None]
                flat_rows = (-2 - slots[part]).clamp(min=0)
                for out, pool in zip((k, v), (pool_k, pool_v)):
                    row0 = pool.reshape(-1, hkv, d).index_select(0, flat_rows).to(dtype)
                    out[part, 0] = torch.where(has, row0, out[part, 0])
        return k, v
    in_pool = slots >= 0
    if in_pool.any():
        k[in_pool] = pool_k[slots[in_pool]].to(dtype)
        v[in_pool] = pool_v[slots[in_pool]].to(dtype)
    if not in_pool.all():
        kq, vq = decoded(~in_pool)
        k[~in_pool] = kq.to(dtype)
        v[~in_pool] = vq.to(dtype)
    has = slots <= -2
    if has.any():
        flat_rows = -2 - slots[has]
        k[has, 0] = pool_k.reshape(-1, hkv, d)[flat_rows].to(dtype)
        v[has, 0] = pool_v.reshape(-1, hkv, d)[flat_rows].to(dtype)
    return k, v


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
    n_blocks = -(-num_tokens // cfg.group)
    hkv, d = kv_cache.shape[1], cfg.head_dim
    k, v = gather_tiles(block_ids[:n_blocks], kv_cache, pool_k, pool_v, block_to_slot, cfg)
    return k.reshape(-1, hkv, d)[:num_tokens], v.reshape(-1, hkv, d)[:num_tokens]


def gqa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    q_offset: int,
    k_alt: torch.Tensor | None = None,
    v_alt: torch.Tensor | None = None,
    use_alt: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal GQA attention, computed in float64 and returned as fp32. q [Tq, Hq, D], k/v [Tk, Hkv, D];
    query i sits at absolute position q_offset + i and sees keys j <= q_offset + i. Returns [Tq, Hq, D].

    float64 because an fp32 matmul's rounding depends on the operand shapes (Tq, Tk): the same query
    computed in a 406-token prefill and in a 150-token prefill after a prefix-cache hit would differ in
    the last bits, which a greedy near-tie can turn into a different token. In float64 that noise sits
    far below the bf16 output's rounding, so batch layout no longer changes the model's output.

    With k_alt/v_alt [Tk, Hkv, D] and use_alt bool [Tq, Tk]: query i reads key/value j from the
    alternative tensors where use_alt[i, j] (the per-(query, key) choice of the cache semantics)."""
    tq, hq, d = q.shape
    tk, hkv, _ = k.shape
    if hq % hkv:
        raise ValueError(f"query heads {hq} must be a multiple of KV heads {hkv}")
    rep = hq // hkv
    # rows (r, i) of one KV head: its rep query heads x Tq queries, so every product is a plain bmm
    # (a broadcast matmul over strided views was 2-5x slower on CPU at decode shapes, bit-identical output)
    qb = q.double().reshape(tq, hkv, rep, d).permute(1, 2, 0, 3).reshape(hkv, rep * tq, d)

    def keys_t(x):
        return x.double().permute(1, 2, 0)  # [Hkv, D, Tk]

    def values(x):
        return x.double().permute(1, 0, 2)  # [Hkv, Tk, D]

    scores = torch.bmm(qb, keys_t(k)) * scale  # [Hkv, rep*Tq, Tk]
    alt_rows = use_alt.repeat(rep, 1) if use_alt is not None else None  # [rep*Tq, Tk]
    if alt_rows is not None:
        scores = torch.where(alt_rows, torch.bmm(qb, keys_t(k_alt)) * scale, scores)
    pos_q = (torch.arange(tq, device=q.device) + q_offset).repeat(rep)[:, None]
    pos_k = torch.arange(tk, device=q.device)[None, :]
    probs = torch.softmax(scores.masked_fill(pos_k > pos_q, float("-inf")), dim=-1)
    if alt_rows is None:
        out = torch.bmm(probs, values(v))
    else:
        out = torch.bmm(probs.masked_fill(alt_rows, 0.0), values(v)) + \
            torch.bmm(probs.masked_fill(~alt_rows, 0.0), values(v_alt))
    return out.reshape(hkv, rep, tq, d).permute(2, 0, 1, 3).reshape(tq, hq, d).float()


def _consistent_views(k_ctx, v_ctx, k_new, v_new, is_record_tile, cfg, quantize):
    """fp16 view and quantized view [L, Hkv, D] (rotated) of one request's keys/values; the quantized
    view is None when no tile differs (decode steps: every complete earlier tile is a record already).
    is_record_tile [n_ctx_tiles] bool: context tile already a record (decoded)."""
    g = cfg.group
    kf = torch.cat([k_ctx, k_new], 0)
    vf = torch.cat([v_ctx, v_new], 0)
    length, hkv, d = kf.shape
    todo = [
        j for j in range(cfg.first_quantized_tile, length // g)
        if quantize and not (j < len(is_record_tile) and is_record_tile[j])
    ]
    if not todo:
        return kf, vf, None, None
    kq, vq = kf.clone(), vf.clone()
    rows = torch.cat([torch.arange(j * g, (j + 1) * g) for j in todo]).to(kf.device)
    tiles_k = kf[rows].reshape(len(todo), g, hkv, d).transpose(1, 2).reshape(-1, g, d)
    tiles_v = vf[rows].reshape(len(todo), g, hkv, d).transpose(1, 2).reshape(-1, g, d)
    dk, dv = decode_tiles(encode_tiles(tiles_k, tiles_v, cfg), cfg)
    kq[rows] = dk.reshape(len(todo), hkv, g, d).transpose(1, 2).reshape(-1, hkv, d)
    vq[rows] = dv.reshape(len(todo), hkv, g, d).transpose(1, 2).reshape(-1, hkv, d)
    if cfg.token_sink and todo[0] == 0:  # position 0 stays fp16 (its sink row)
        kq[0], vq[0] = kf[0], vf[0]
    return kf, vf, kq, vq


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
    quantize_new_tiles: bool = True,
) -> torch.Tensor:
    """Decode, prefill and chunked prefill over a kvarn cache. Returns fp32 [T, Hq, D] (original frame).

    query [T, Hq, D], key/value [T, Hkv, D] (new tokens, original frame); block_table [B, M];
    seq_lens [B] (context + new tokens); query_start_loc [B + 1] (CPU ints).
    quantize_new_tiles=False: tiles not yet flushed (this step's tokens included) are read in fp16,
    the semantics of the GPU kernel path (lossless prompt attention); True: cache-consistent.
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
        g = cfg.group
        n_ctx_tiles = -(-ctx // g)
        is_record = (block_to_slot[block_table[r][:n_ctx_tiles].long()] < 0).tolist() if n_ctx_tiles else []
        # new rows exactly as the pool stores them (rotated, fp16)
        k_new = rotate(key[s:e]).half().float()
        v_new = rotate(value[s:e]).half().float()
        kf, vf, kq, vq = _consistent_views(k_ctx, v_ctx, k_new, v_new, is_record, cfg, quantize_new_tiles)
        if kq is None:  # both views agree: one attention pass
            o_rot = gqa_attention(rotate(query[s:e]), kf, vf, scale, q_offset=ctx)
        else:
            tile_q = (torch.arange(ctx, lens[r], device=query.device) // g)[:, None]
            tile_k = (torch.arange(lens[r], device=query.device) // g)[None, :]
            # [Tq, L]: earlier complete tiles (not the sink, unless it is quantized)
            use_q = (tile_k >= cfg.first_quantized_tile) & (tile_k < tile_q)
            o_rot = gqa_attention(rotate(query[s:e]), kf, vf, scale, q_offset=ctx, k_alt=kq, v_alt=vq, use_alt=use_q)
        out[s:e] = rotate(o_rot)
    return out
