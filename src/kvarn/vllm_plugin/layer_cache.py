"""Per-layer cache state and step logic of the kvarn backend, free of vLLM imports (unit-tested).

One :class:`LayerCache` per attention layer holds the fp16 pool ``pool_k/pool_v [num_slots, G,
Hkv, D]`` (rotated rows). Each step, given the shared :class:`~kvarn.vllm_plugin.pool.StepPlan`:
  1. :meth:`update`: flush planned tiles (pool slot -> encode -> record), then write the new
     tokens' rotated K/V into their pool rows (flush first, so a slot freed by a flush can be reused
     in the same step);
  2. :meth:`attend`: causal GQA attention with the cache-consistent semantics of
     :mod:`kvarn.reference.paged_attention` (earlier complete tiles quantized, own tile and sink fp16).
records: uint8 [num_blocks, Hkv, R] (the vLLM page, one tile record per (block, KV head)).

On CUDA the step uses the Triton kernels of :mod:`kvarn.kernels` (flush, rotate-append, fused decode
attention) plus FlashAttention for fresh prompts, routed per token by :mod:`kvarn.vllm_plugin.routing`.
That path reads this step's tokens in full precision (lossless prompt attention, method.md §1.8), i.e.
it computes the reference with ``quantize_new_tiles=False``. The CPU runs the pure-PyTorch reference
with in-step quantization (cache-consistent: prefix-cache hits and chunking give the same result).
"""

from __future__ import annotations

import torch

from kvarn.config import KvarnConfig
from kvarn.reference import encode_tiles, rotate
from kvarn.reference.paged_attention import gather_tiles, paged_attention
from kvarn.vllm_plugin.routing import MQ_GROUP, DenseChunks, StepRoute, plan_route, sdpa_prefill

# Context tiles dequantized per pass of LayerCache.attend_dense (256 tiles x 8 KV heads: ~134 MB per fp32 temporary).
DENSE_TILES_PER_PASS = 256
# Specializations of the grouped-rows decode kernel compiled by warm_grouped_kernel (one per process).
_GROUPED_WARM: set = set()


def _rows_into(res: torch.Tensor, run: tuple[int, int] | None, tokens: torch.Tensor, fn, *xs: torch.Tensor) -> None:
    """res[tokens] = fn(*(x[tokens] for x in xs)) for one route's tokens [Tr]: read and written in place when they
    are the contiguous run ``run`` = (a, b) (fn called with ``out=res[a:b]``), else gathered and scattered."""
    if run is not None:
        a, b = run
        fn(*(x[a:b] for x in xs), out=res[a:b])
    else:
        res.index_copy_(0, tokens, fn(*(x.index_select(0, tokens) for x in xs)).to(res.dtype))


class LayerCache:
    def __init__(self, cfg: KvarnConfig, num_kv_heads: int, num_slots: int, device="cpu", use_kernels=None,
                 prefill_fn=None):
        """use_kernels: run the Triton kernels (default: on CUDA; True on CPU needs TRITON_INTERPRET=1).
        prefill_fn(q, k, v, cu_seqlens, max_len, scale, out=None) -> [T, Hq, D]: causal varlen attention for
        fresh prompts on the kernel path (vLLM's FlashAttention; default: a per-request SDPA loop)."""
        self.use_kernels = use_kernels
        self.prefill_fn = prefill_fn or sdpa_prefill
        self._warm_group = 0  # the group size whose grouped-rows kernel this layer saw compiled
        self.cfg = cfg
        self.num_kv_heads = num_kv_heads
        self.num_slots = num_slots
        self.device = torch.device(device)
        shape = (num_slots, cfg.group, num_kv_heads, cfg.head_dim)
        self.pool_k = torch.zeros(shape, dtype=torch.float16, device=self.device)
        self.pool_v = torch.zeros(shape, dtype=torch.float16, device=self.device)

    def resize(self, num_slots: int, device=None) -> None:
        device = torch.device(device) if device is not None else self.device
        if num_slots != self.num_slots or device != self.device:
            self.__init__(self.cfg, self.num_kv_heads, num_slots, device, self.use_kernels, self.prefill_fn)

    def _kernels(self, t: torch.Tensor) -> bool:
        return t.is_cuda if self.use_kernels is None else self.use_kernels

    def update(
        self,
        records: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        flush_blocks: torch.Tensor,
        flush_slots: torch.Tensor,
        write_rows: torch.Tensor,
        flush_rows: torch.Tensor | None = None,
    ) -> None:
        """records [num_blocks, Hkv, R] uint8; key/value [T, Hkv, D] (original frame; T may include
        padding beyond len(write_rows)); flush_* [F]; write_rows [T'] (-1 = skip); flush_rows [F] (flat
        pool row that keeps the flushed tile's row 0, -1 = none; sink "token")."""
        g, hkv, d = self.cfg.group, self.num_kv_heads, self.cfg.head_dim
        if self._kernels(records):
            from kvarn.kernels import flush_tiles, rotate_append

            if flush_slots.numel():
                flush_tiles(self.pool_k, self.pool_v, records, flush_slots.to(torch.int32),
                            flush_blocks.to(torch.int32), self.cfg,
                            rows=None if flush_rows is None else flush_rows.to(torch.int32))
            n = write_rows.shape[0]
            if n:
                rotate_append(key[:n], value[:n], self.pool_k, self.pool_v, None, write_rows, g)
            return
        if flush_slots.numel():
            k = self.pool_k[flush_slots].transpose(1, 2).reshape(-1, g, d)  # [F*Hkv, G, D]
            v = self.pool_v[flush_slots].transpose(1, 2).reshape(-1, g, d)
            records[flush_blocks] = encode_tiles(k, v, self.cfg).view(-1, hkv, self.cfg.record_bytes)
            if flush_rows is not None and bool((flush_rows >= 0).any()):
                keep = flush_rows >= 0
                for pool in (self.pool_k, self.pool_v):
                    pool.view(-1, hkv, d)[flush_rows[keep]] = pool[flush_slots[keep], 0]
        n = write_rows.shape[0]
        ok = write_rows >= 0
        if n and bool(ok.any()):
            rows = write_rows[ok]
            self.pool_k.view(-1, hkv, d)[rows] = rotate(key[:n][ok]).half()
            self.pool_v.view(-1, hkv, d)[rows] = rotate(value[:n][ok]).half()

    def attend(
        self,
        records: torch.Tensor,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        block_to_slot: torch.Tensor,
        block_table: torch.Tensor,
        seq_lens: torch.Tensor,
        query_start_loc_cpu: torch.Tensor,
        scale: float,
        quantize_new_tiles: bool = True,
        route: StepRoute | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[T, Hq, D] for query [T, Hq, D] (T = real tokens): fp32 on the reference path, query.dtype on
        the kernel path (which ignores quantize_new_tiles: see the module docstring). route: the
        step's token routing (built here from the host arrays if None). out [T, Hq, D]: on a
        kernel step (decode-only or mixed) the results are stored there and it is returned (no extra copy)."""
        if self._kernels(records):
            self.warm_grouped_kernel(query, records, block_to_slot, block_table, MQ_GROUP)
            if route is None:
                route = plan_route(query_start_loc_cpu.cpu().numpy(), seq_lens.cpu().numpy(), query.device,
                                   tile=self.cfg.group)
            return self._attend_kernels(records, query, key, value, block_to_slot, block_table, seq_lens, scale, route,
                                        out)
        return paged_attention(
            query, key, value, records, self.pool_k, self.pool_v, block_to_slot, block_table,
            seq_lens, query_start_loc_cpu, self.cfg, scale, quantize_new_tiles,
        )

    def warm_grouped_kernel(self, query: torch.Tensor, records: torch.Tensor, block_to_slot: torch.Tensor,
                            block_table: torch.Tensor, group: int) -> bool:
        """Compile the grouped-rows decode kernel (``tokens_per_program = group``) at the first forward
        (vLLM's warm-up runs), not at the first chunked-prefill continuation while serving: Triton's JIT
        takes ~2 s there (probe_mq_group.py, H200), which burst P's timed prefill steps paid in full.
        One launch of ``group`` padding rows (causal length 0: nothing is read or written) with the real
        dtypes, head count and block-table width, so the specialization matches. Returns True if it launched."""
        if group <= 1 or query.shape[0] == 0 or self._warm_group == group:  # off (the default) or done: no cost
            return False
        key = (group, query.dtype, query.shape[1], block_table.shape[1], self.cfg, str(query.device))
        if key in _GROUPED_WARM:  # another layer compiled this specialization
            self._warm_group = group
            return False
        if query.is_cuda and torch.cuda.is_current_stream_capturing():
            return False
        from kvarn.kernels import kvarn_decode_attention

        q = query[:1].expand(group, -1, -1).contiguous()
        table = torch.zeros((1, block_table.shape[1]), dtype=torch.int32, device=query.device)
        lens = torch.zeros(group, dtype=torch.int32, device=query.device)
        kvarn_decode_attention(q, records, self.pool_k, self.pool_v, block_to_slot.to(torch.int32), table, lens,
                               1.0, self.cfg, tokens_per_program=group)
        _GROUPED_WARM.add(key)
        self._warm_group = group
        return True

    def _attend_kernels(self, records, query, key, value, block_to_slot, block_table, seq_lens, scale,
                        route: StepRoute, out: torch.Tensor | None = None) -> torch.Tensor:
        from kvarn.kernels import kvarn_decode_attention

        b2s = block_to_slot.to(torch.int32)
        table = block_table.to(torch.int32)
        if route.decode_only and query.shape[0] == seq_lens.shape[0]:  # one row per request (graph-safe)
            return kvarn_decode_attention(query, records, self.pool_k, self.pool_v, b2s, table,
                                          seq_lens.to(torch.int32), scale, self.cfg, out=out)
        # mixed step: results straight into ``out`` (vLLM's output rows) where given in q's dtype, else a buffer
        served = route.num_mq + route.num_fresh + route.num_grp + route.num_dense
        res = out if out is not None and out.dtype == query.dtype else torch.empty_like(query)
        if served != query.shape[0]:
            res.zero_()
        if route.num_mq:  # decode rows (and short continuations): one kernel row per token
            mq_table = table.index_select(0, route.mq_req)
            _rows_into(res, route.mq_range, route.mq_tokens, lambda q, out=None: kvarn_decode_attention(
                q, records, self.pool_k, self.pool_v, b2s, mq_table, route.mq_len, scale, self.cfg, out=out), query)
        if route.num_grp:  # continuation chunks, route.group tokens per program
            o = kvarn_decode_attention(query.index_select(0, route.grp_src), records, self.pool_k, self.pool_v, b2s,
                                       table.index_select(0, route.grp_req), route.grp_len, scale, self.cfg,
                                       tokens_per_program=route.group)
            res.index_copy_(0, route.grp_tokens, o.index_select(0, route.grp_rows))
        if route.num_dense:
            dc = route.dense
            res.index_copy_(0, dc.tokens, self.attend_dense(records, query.index_select(0, dc.tokens), b2s, table,
                                                            scale, dc).to(res.dtype))
        if route.num_fresh:  # the step's new prompts: FlashAttention on the raw q/k/v
            _rows_into(res, route.fresh_range, route.fresh_tokens, lambda q, k, v, out=None: self.prefill_fn(
                q, k, v, route.fresh_cu, route.fresh_max, scale, out=out), query, key, value)
        return res

    def attend_dense(self, records: torch.Tensor, q: torch.Tensor, block_to_slot: torch.Tensor,
                     block_table: torch.Tensor, scale: float, dc: DenseChunks) -> torch.Tensor:
        """Dense continuation chunks: q [Tq, Hq, D] (model frame) -> [Tq, Hq, D] fp16 (model frame).

        Each chunk's context tiles (dc.tab_rows/tab_cols of the block table) are gathered once by
        reference.paged_attention.gather_tiles (a pool tile's fp16 rows as they are, a record dequantized;
        nothing waits on the host), [Nb, G, Hk, D]. Then o = attn(q H, K, V) H
        with K, V [Tk, Hk, D] the rotated context (H symmetric, H H = I: the scores are q.k), causal
        bottom-right (query i of a chunk of n sees positions <= L - n + i): what the decode kernel computes
        row by row, with each tile read once per chunk instead of once per token."""
        hk, d = self.num_kv_heads, self.cfg.head_dim
        k, v = gather_tiles(block_table[dc.tab_rows, dc.tab_cols], records, self.pool_k, self.pool_v, block_to_slot,
                            self.cfg, torch.float16, no_sync=True, tiles_per_pass=DENSE_TILES_PER_PASS)
        k = k.view(-1, hk, d).index_select(0, dc.keep)  # [Tk, Hk, D]
        v = v.view(-1, hk, d).index_select(0, dc.keep)
        o = self.prefill_fn(rotate(q.float()).to(torch.float16), k, v, dc.cu_q, dc.max_q, scale, dc.cu_k, dc.max_k)
        return rotate(o.float()).to(torch.float16)
