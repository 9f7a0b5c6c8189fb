"""Which attention path each query token of a step takes on the kernel (CUDA) path; no vLLM import.

vLLM batches decodes, chunked-prefill continuations and fresh prompts in one step. Given the
step's layout (host arrays, computed once per step by the metadata builder, shared by all layers):

* **fresh** requests (nothing cached before this step): FlashAttention on the raw, unrotated q/k/v
  of the step, causal, lossless (method.md §1.8);
* every other token (decodes, continuation chunks): one "virtual decode row" of the fused kvarn
  decode kernel, attending causally to positions [0, pos] of its request. Tiles flushed before
  this step are read as stored (quantized); rows written this step are still fp16 pool rows.
  With ``group`` > 1 (``KVARN_MQ_GROUP``, default 1) the tokens of a multi-token continuation go
  to the kernel ``group`` at a time, one program per group and KV head, so each tile is read once
  per group instead of once per token (``tokens_per_program``);
* **dense** continuation chunks (at least ``dense_min`` tokens, ``KVARN_DENSE_MIN``, default 128):
  the request's context is gathered once per layer in the rotated frame (records dequantized, pool
  rows as they are) and the chunk runs through FlashAttention against it (bottom-right causal).
  Row-wise, every token of a 16K-token chunk re-read its request's whole context: on the H200 a
  32K-token prompt's prefill took 3.3x fp8's with groups of 4 (2026-11-30, docs/gpu.md).

So the kernel path computes :func:`kvarn.reference.paged_attention.paged_attention` with
``quantize_new_tiles=False``: what was in the cache at the start of the step is read as stored,
this step's tokens in full precision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from kvarn.config import check_dense_min, check_mq_group
from kvarn.vllm_plugin.cuda_step import to_device

# Continuation tokens per decode-kernel program (1 = one program per token), checked when the plugin loads.
# Off by default: on the H200 the kernel alone is 2.8x faster with 4 (probe_mq_group.py), but end to end, with
# its compile moved to warm-up (LayerCache.warm_grouped_kernel), burst P's prefill moved -0.9% and burst A +0.2%
# (benchmarks/gpu/results/h200-capacity-2026-11-30g, 2026-11-30); long chunks take the dense route instead.
MQ_GROUP = check_mq_group(os.environ.get("KVARN_MQ_GROUP", "1"))


# Continuation chunks of at least this many tokens take the dense route (0 = never), checked when the plugin loads.
DENSE_MIN = check_dense_min(os.environ.get("KVARN_DENSE_MIN", "128"))


@dataclass
class StepRoute:
    """Token routing of one step (device tensors; T = real tokens, B = requests).

    decode_only: no request has more than one query token (rows == requests, no gathers; requests
        without a token are CUDA-graph padding).
    mq_tokens [Tm] int64: tokens served by the decode kernel.
    mq_req [Tm] int64: their request (row of the block table); mq_len [Tm] int32: causal length.
    fresh_tokens [Tf] int64; fresh_cu [Bf + 1] int32 cumulative lengths; fresh_max: longest.
    group: tokens per program of the grouped continuation rows (1 = none are grouped);
    grp_src [Pg * group] int64: the token each grouped row reads its query from (0 for padding rows);
    grp_req [Pg] int64: each group's request; grp_len [Pg * group] int32: causal lengths (0 = padding);
    grp_rows [Tg] int64 and grp_tokens [Tg] int64: the real rows and the tokens they answer.
    mq_range, fresh_range: (a, b) when mq_tokens / fresh_tokens are exactly the tokens a..b-1 (vLLM puts
        running requests before new prompts, so in most mixed steps both are), else None: those rows are
        then sliced and written in place instead of gathered and scattered.
    """

    decode_only: bool
    mq_tokens: torch.Tensor
    mq_req: torch.Tensor
    mq_len: torch.Tensor
    fresh_tokens: torch.Tensor
    fresh_cu: torch.Tensor
    fresh_max: int
    group: int = 1
    grp_src: torch.Tensor | None = None
    grp_req: torch.Tensor | None = None
    grp_len: torch.Tensor | None = None
    grp_rows: torch.Tensor | None = None
    grp_tokens: torch.Tensor | None = None
    dense: "DenseChunks | None" = None
    mq_range: tuple[int, int] | None = None
    fresh_range: tuple[int, int] | None = None

    @property
    def num_grp(self) -> int:
        """Tokens served by grouped rows."""
        return 0 if self.grp_tokens is None else int(self.grp_tokens.shape[0])

    @property
    def num_dense(self) -> int:
        """Tokens of dense continuation chunks."""
        return 0 if self.dense is None else int(self.dense.tokens.shape[0])

    @property
    def num_fresh(self) -> int:
        return int(self.fresh_tokens.shape[0])

    @property
    def num_mq(self) -> int:
        return int(self.mq_tokens.shape[0])


@dataclass
class DenseChunks:
    """Continuation chunks attended densely (device tensors; Tq = their tokens, Nb = their context tiles,
    Tk = their context positions, C = chunks).

    tokens [Tq] int64: the step's tokens they answer, chunk by chunk; cu_q [C + 1] int32, max_q.
    tab_rows, tab_cols [Nb] int64: block-table entries of each chunk's context tiles (tiles 0..ceil(L/G)-1);
    keep [Tk] int64: rows of the gathered [Nb * G] positions that exist (the first L of each chunk's tiles);
    cu_k [C + 1] int32 cumulative context lengths L (cached + this chunk), max_k.
    """

    tokens: torch.Tensor
    cu_q: torch.Tensor
    max_q: int
    tab_rows: torch.Tensor
    tab_cols: torch.Tensor
    keep: torch.Tensor
    cu_k: torch.Tensor
    max_k: int


def _dense_chunks(reqs: np.ndarray, tokens: np.ndarray, qlen: np.ndarray, seq: np.ndarray, tile: int,
                  device) -> DenseChunks:
    """Host indices of the dense route for requests ``reqs`` (their tokens, in request order)."""
    L, n = seq[reqs], qlen[reqs]
    nb = -(-L // tile)

    def local(counts):  # 0..c-1 for each count, concatenated
        return np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)

    keep = np.repeat((np.cumsum(nb) - nb) * tile, L) + local(L)
    return DenseChunks(
        tokens=to_device(tokens, device, torch.int64),
        cu_q=to_device(np.concatenate([[0], np.cumsum(n)]), device, torch.int32), max_q=int(n.max()),
        tab_rows=to_device(np.repeat(reqs, nb), device, torch.int64),
        tab_cols=to_device(local(nb), device, torch.int64),
        keep=to_device(keep, device, torch.int64),
        cu_k=to_device(np.concatenate([[0], np.cumsum(L)]), device, torch.int32), max_k=int(L.max()))


def token_range(idx: np.ndarray) -> tuple[int, int] | None:
    """(a, b) if the sorted, distinct token indices idx are exactly a..b-1, else None (also when empty)."""
    if idx.shape[0] == 0:
        return None
    a, b = int(idx[0]), int(idx[-1]) + 1
    return (a, b) if b - a == idx.shape[0] else None


def plan_route(query_start_loc: np.ndarray, seq_lens: np.ndarray, device, group: int | None = None,
               tile: int | None = None, dense_min: int | None = None) -> StepRoute:
    """query_start_loc [B + 1], seq_lens [B] (cached + new tokens), host ints -> StepRoute on device.
    group: continuation tokens per kernel program (None = ``KVARN_MQ_GROUP``). tile: the preset's tile
    size G (None: no dense route); dense_min: continuation chunks of at least this many tokens take the
    dense route (None = ``KVARN_DENSE_MIN``, 0 = never)."""
    group = MQ_GROUP if group is None else check_mq_group(group)
    dense_min = DENSE_MIN if dense_min is None else check_dense_min(dense_min)
    qsl = np.asarray(query_start_loc, dtype=np.int64)
    seq = np.asarray(seq_lens, dtype=np.int64)
    if qsl.shape[0] != seq.shape[0] + 1:
        raise ValueError(f"query_start_loc must be [B + 1] for seq_lens [B], got {qsl.shape} and {seq.shape}")
    qlen = np.diff(qsl)
    if (qlen < 0).any() or (seq < qlen).any():
        raise ValueError("inconsistent step: a request has more new tokens than its sequence length")
    total = int(qsl[-1])
    req = np.repeat(np.arange(seq.shape[0]), qlen)
    tok = np.arange(total)
    fresh_req = (seq == qlen) & (qlen > 1)  # nothing cached: FlashAttention (a 1-token prompt is a decode row)
    is_fresh = fresh_req[req]
    cont = ~fresh_req & (qlen > 1)  # continuation chunks
    dense_req = cont & (tile is not None) & (dense_min > 0) & (qlen >= dense_min)
    is_dense = dense_req[req]
    grouped_req = cont & ~dense_req & (group > 1)
    is_grouped = grouped_req[req]
    mq = np.nonzero(~is_fresh & ~is_grouped & ~is_dense)[0]
    fr = np.nonzero(is_fresh)[0]
    lens = seq[req] - (qsl[req + 1] - tok) + 1
    fq = qlen[fresh_req]
    grp = {}
    if grouped_req.any():
        gr = np.nonzero(grouped_req)[0]
        ng = -(-qlen[gr] // group)  # groups per request
        k = np.arange(ng.sum()) - np.repeat(np.cumsum(ng) - ng, ng)  # group index within its request
        first = np.repeat(qsl[gr], ng) + k * group
        rows = first[:, None] + np.arange(group)[None, :]  # [Pg, group] token indices
        real = rows < np.repeat(qsl[gr + 1], ng)[:, None]
        src = np.where(real, rows, 0).reshape(-1)
        grp = dict(group=group, grp_src=to_device(src, device, torch.int64),
                   grp_req=to_device(np.repeat(gr, ng), device, torch.int64),
                   grp_len=to_device(np.where(real.reshape(-1), lens[src], 0), device, torch.int32),
                   grp_rows=to_device(np.nonzero(real.reshape(-1))[0], device, torch.int64),
                   grp_tokens=to_device(rows[real], device, torch.int64))

    return StepRoute(
        decode_only=bool((qlen <= 1).all()),
        mq_tokens=to_device(mq, device, torch.int64),
        mq_req=to_device(req[mq], device, torch.int64),
        mq_len=to_device(lens[mq], device, torch.int32),
        fresh_tokens=to_device(fr, device, torch.int64),
        fresh_cu=to_device(np.concatenate([[0], np.cumsum(fq)]), device, torch.int32),
        fresh_max=int(fq.max()) if fq.shape[0] else 0,
        dense=_dense_chunks(np.nonzero(dense_req)[0], np.nonzero(is_dense)[0], qlen, seq, tile, device)
        if dense_req.any() else None,
        mq_range=token_range(mq),
        fresh_range=token_range(fr),
        **grp,
    )


def sdpa_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int,
                 scale: float, cu_k: torch.Tensor | None = None, max_k: int | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """Fallback of FlashAttention's varlen call (tests, non-vLLM use): q [Tq, Hq, D], k/v [Tk, Hk, D],
    cu [B + 1] query bounds, cu_k [B + 1] key bounds (None = cu) -> causal GQA attention per request,
    bottom-right aligned (query i of n sees keys j <= i + Lk - n), [Tq, Hq, D] in q.dtype (into ``out``
    if given, e.g. a slice of the layer's output)."""
    out = torch.empty_like(q) if out is None else out
    bq = cu.tolist()
    bk = bq if cu_k is None else cu_k.tolist()
    rep = q.shape[1] // k.shape[1]
    for a, b, c, e in zip(bq[:-1], bq[1:], bk[:-1], bk[1:]):
        qi = q[a:b].transpose(0, 1).float()
        ki = k[c:e].transpose(0, 1).float().repeat_interleave(rep, 0)
        vi = v[c:e].transpose(0, 1).float().repeat_interleave(rep, 0)
        shift = (e - c) - (b - a)  # cached positions before the chunk
        seen = torch.arange(e - c, device=q.device)[None, :] <= torch.arange(b - a, device=q.device)[:, None] + shift
        o = torch.nn.functional.scaled_dot_product_attention(qi, ki, vi, attn_mask=seen, scale=scale)
        out[a:b] = o.transpose(0, 1).to(q.dtype)
    return out
