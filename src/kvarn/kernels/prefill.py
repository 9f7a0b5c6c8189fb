"""Multi-query attention over a kvarn cache (chunked-prefill continuations, speculative verify).

Every query token becomes one "virtual decode row" of the fused decode kernel: token t of
request r sits at absolute position ``pos = seq_lens[r] - (query_start_loc[r + 1] - t)`` and
attends causally to positions [0, pos], all of which are already in the cache (records or pool
rows: the step's new K/V are written by rotate_append before attention, as in decode). Rows are
built with device ops only (searchsorted + gathers), so the call is CUDA-graph safe.

Cost: each query token reads its whole causal context, so T tokens read ~T contexts. That is the
right trade for speculative verify and small chunks (few tokens per request); a long
continuation chunk is cheaper as one dequantize-then-FlashAttention pass (not built here).
A first prefill chunk (no cached context) should run FlashAttention on the raw, unrotated K/V
(lossless, method.md §1.8) and needs no kvarn kernel beyond rotate_append.
"""

from __future__ import annotations

import torch

from kvarn.config import KvarnConfig
from kvarn.kernels._common import check
from kvarn.kernels.decode_attention import kvarn_decode_attention


def virtual_rows(block_table: torch.Tensor, seq_lens: torch.Tensor, query_start_loc: torch.Tensor,
                 num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query token: (block_table row [T, M] int32, causal length [T] int32)."""
    check(query_start_loc.dim() == 1 and query_start_loc.shape[0] == seq_lens.shape[0] + 1,
          f"query_start_loc must be [B + 1] for seq_lens [B], got {tuple(query_start_loc.shape)}")
    tok = torch.arange(num_tokens, device=block_table.device, dtype=torch.int64)
    ends = query_start_loc[1:].to(device=block_table.device, dtype=torch.int64)
    req = torch.searchsorted(ends, tok, right=True)
    length = seq_lens.to(torch.int64)[req] - (ends[req] - tok) + 1
    return block_table.index_select(0, req).contiguous(), length.to(torch.int32)


def kvarn_multiquery_attention(
    query: torch.Tensor, kv_cache: torch.Tensor, pool_k: torch.Tensor, pool_v: torch.Tensor,
    block_to_slot: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor, scale: float, cfg: KvarnConfig, **kernel_kw,
) -> torch.Tensor:
    """query [T, Hq, D] (original frame) of B requests laid out by query_start_loc [B + 1];
    seq_lens int32 [B] = cached context + new tokens (the new tokens' K/V already in the cache);
    block_table int32 [B, M]. Returns [T, Hq, D] in query.dtype (causal attention, rotated frame
    inside, as kvarn.reference.paged_attention). kernel_kw go to kvarn_decode_attention."""
    check(query.dim() == 3, f"query must be [T, Hq, D], got {tuple(query.shape)}")
    table, lengths = virtual_rows(block_table, seq_lens, query_start_loc, query.shape[0])
    return kvarn_decode_attention(query, kv_cache, pool_k, pool_v, block_to_slot, table, lengths, scale, cfg,
                                  **kernel_kw)
