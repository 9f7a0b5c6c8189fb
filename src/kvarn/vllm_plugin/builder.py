"""The kvarn metadata builder: plans each step once for all layers of a worker (imports vLLM).

On CPU every layer then flushes and writes in its own update; on CUDA the flush runs here, outside CUDA
graphs, and the per-step maps live in persistent buffers (:mod:`kvarn.vllm_plugin.cuda_step`), so
single-token decode batches replay full CUDA graphs. The step layout comes from vLLM's host arrays
(:mod:`kvarn.vllm_plugin.host_plan`) once it has matched the device tensors.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from vllm.v1.attention.backend import AttentionCGSupport, AttentionMetadataBuilder, CommonAttentionMetadata

from kvarn.config import (KvarnConfig, max_num_seqs_for_ratio, pool_bytes_per_layer, pool_counted_ratio, pool_slots,
                          sink_row_slots)
from kvarn.vllm_plugin.host_plan import host_step
from kvarn.vllm_plugin.pool import registry
from kvarn.vllm_plugin.routing import StepRoute, plan_route
from kvarn.vllm_plugin.validate import KvarnConfigError, env_problems

logger = logging.getLogger("vllm.kvarn")


def _vllm_config():
    from vllm.config import get_current_vllm_config

    return get_current_vllm_config()


def _tp_rank() -> int:
    try:
        from vllm.distributed import get_tensor_model_parallel_rank

        return int(get_tensor_model_parallel_rank())
    except Exception:  # not initialized (unit tests)
        return 0


def kvarn_config(kv_cache_dtype: str, head_dim: int) -> KvarnConfig:
    """The format of a layer; numerics from ``KVARN_NUMERICS`` (reference|improved) and the sink mode from
    ``KVARN_SINK`` (fp16|quantized|token) if set. A bad value raises, listing the valid ones."""
    problems = env_problems()
    if problems:
        raise KvarnConfigError("; ".join(problems))
    return KvarnConfig.from_name(kv_cache_dtype, head_dim=head_dim, numerics=os.environ.get("KVARN_NUMERICS") or None,
                                 sink=os.environ.get("KVARN_SINK") or None)


def num_pool_slots(vllm_config, cfg: KvarnConfig) -> int:
    """Sink/tail slots of the fp16 pool (the sink-row slots of ``KVARN_SINK=token`` come on top)."""
    sc = vllm_config.scheduler_config
    return pool_slots(sc.max_num_seqs, sc.max_num_batched_tokens, cfg.group, cfg.pool_slots_per_seq)


def num_row_slots(vllm_config, cfg: KvarnConfig) -> int:
    """Pool slots that hold sink rows (``KVARN_SINK=token``; 0 otherwise), after the sink/tail slots."""
    return sink_row_slots(vllm_config.scheduler_config.max_num_seqs, cfg.group) if cfg.token_sink else 0


def graph_size_hint(max_num_seqs: int, capture_size: int | None, eager: bool) -> str:
    """A startup hint when decode batches can outgrow vLLM's largest CUDA graph (they then run eagerly,
    which costs kvarn's extra per-layer launches more than FlashAttention's); '' when they cannot."""
    if eager or not capture_size or max_num_seqs <= capture_size:
        return ""
    return (f"; vLLM captures CUDA graphs for at most {capture_size} sequences per step, so larger decode steps run "
            f"eagerly: add --compilation-config '{{\"max_cudagraph_capture_size\": {max_num_seqs}}}' to graph "
            f"them (max_num_seqs {max_num_seqs})")


@dataclass
class KvarnMetadata:
    num_actual_tokens: int
    max_query_len: int
    query_start_loc: torch.Tensor  # [B + 1] device
    query_start_loc_cpu: torch.Tensor  # [B + 1] cpu
    seq_lens: torch.Tensor  # [B]
    block_table: torch.Tensor  # [B, M]
    slot_mapping: torch.Tensor  # [T]
    flush_blocks: torch.Tensor  # [F]
    flush_slots: torch.Tensor  # [F]
    flush_rows: torch.Tensor | None  # [F] flat pool row keeping a flushed tile's row 0, -1 none (sink "token")
    write_rows: torch.Tensor  # [T] rows of the flattened pool, -1 = skip
    block_to_slot: torch.Tensor  # [num_blocks]
    route: StepRoute | None = None  # kernel (CUDA) path: per-token routing, built once per step


class KvarnMetadataBuilder(AttentionMetadataBuilder[KvarnMetadata]):
    """Plans each step once for all layers. On CUDA the flush runs here (outside CUDA graphs) and the
    per-step maps live in persistent buffers (:mod:`kvarn.vllm_plugin.cuda_step`), so uniform
    single-token decode batches can run as full CUDA graphs."""

    reorder_batch_threshold: int | None = 1
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.UNIFORM_SINGLE_TOKEN_DECODE

    @classmethod
    def get_cudagraph_support(cls, vllm_config=None, kv_cache_spec=None) -> AttentionCGSupport:
        """Full CUDA graphs for single-token decode batches; KVARN_FULL_CUDAGRAPH=0 keeps attention
        out of graphs (piecewise only: the fallback if a capture fails)."""
        if os.environ.get("KVARN_FULL_CUDAGRAPH", "1") == "0":
            return AttentionCGSupport.NEVER
        return cls._cudagraph_support

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.group = kv_cache_spec.block_size
        cfg = kvarn_config(vllm_config.cache_config.cache_dtype, kv_cache_spec.head_size)
        self.num_slots = num_pool_slots(vllm_config, cfg)
        num_blocks = getattr(vllm_config.cache_config, "num_gpu_blocks", None)
        if num_blocks:
            # a slot always belongs to one distinct vLLM block, so more slots than blocks never help
            self.num_slots = min(self.num_slots, int(num_blocks))
        keep_fp16 = os.environ.get("KVARN_DEBUG_KEEP_FP16") == "1"
        if keep_fp16:  # debug: every block keeps an fp16 slot, nothing is quantized
            self.num_slots = int(num_blocks)
            logger.warning("kvarn: KVARN_DEBUG_KEEP_FP16=1: nothing is quantized (debugging only)")
        prefix_caching = bool(getattr(vllm_config.cache_config, "enable_prefix_caching", False))
        # block_to_slot covers every block id (the fused decode kernel indexes it directly)
        self.row_slots = 0 if keep_fp16 else num_row_slots(vllm_config, cfg)
        self.pool = registry.create(
            self.num_slots, self.group, retire_sinks=prefix_caching, keep_fp16=keep_fp16,
            num_blocks=int(num_blocks or 1024), fp16_sink=cfg.sink == "fp16", sink_rows=self.row_slots * self.group,
        )
        self._log_capacity(cfg, kv_cache_spec, layer_names, vllm_config, num_blocks)
        self.host_plan_ok = os.environ.get("KVARN_HOST_PLAN", "1") != "0"
        self.host_checks_left = 32
        self.cuda = None
        if torch.device(device).type == "cuda":
            sc = vllm_config.scheduler_config
            rows = max(sc.max_num_batched_tokens, sc.max_num_seqs)  # tokens (or requests) of one step at most
            self.cuda = registry.cuda_state(cfg, device, int(num_blocks or 1024), rows + 1024)
            from kvarn.kernels.decode_gluon import decode_path_note
            hf = getattr(vllm_config.model_config, "hf_text_config", None)
            n_q = int(getattr(hf, "num_attention_heads", 0) or 0)
            n_kv = int(getattr(hf, "num_key_value_heads", 0) or n_q)
            logger.info("kvarn: %s", decode_path_note(cfg, n_q // n_kv if n_kv else 0))
            from kvarn.kernels.decode_attention import reserve_arrival_counters
            reserve_arrival_counters(torch.device(device), rows * max(n_kv, 1))  # before any graph capture

    def _log_capacity(self, cfg: KvarnConfig, spec, layer_names, vllm_config, num_blocks) -> None:
        per_layer = pool_bytes_per_layer(self.num_slots + self.row_slots, cfg.group, spec.num_kv_heads, spec.head_size)
        pool_total = per_layer * len(layer_names)
        pool_name = {"fp16": "fp16 sink/tail pool", "quantized": "sink quantized (KVARN_SINK=quantized); fp16 tail pool",
                     "token": f"sink quantized but its first token fp16 (KVARN_SINK=token, {self.row_slots * cfg.group} "
                              f"sink rows in {self.row_slots} extra slot(s)); fp16 tail pool"}[cfg.sink]
        msg = (
            f"kvarn: {cfg.kv_cache_dtype} (numerics={cfg.numerics.name}): {cfg.bytes_per_token} B/token/KV head, "
            f"{spec.num_kv_heads} KV heads in this worker (tensor-parallel rank {_tp_rank()}), "
            f"{cfg.ratio_vs(2):.2f}x smaller than bf16; {pool_name} {self.num_slots} slots "
            f"(min({cfg.pool_slots_per_seq} x max_num_seqs="
            f"{vllm_config.scheduler_config.max_num_seqs} + batch tiles + 8, KV blocks)) x "
            f"{len(layer_names)} layers = {pool_total / 2**20:.1f} MiB (pool_bytes={pool_total}), not included in "
            f"the KV cache size vLLM prints; at most {vllm_config.scheduler_config.max_num_seqs} concurrent sequences"
        )
        if num_blocks:
            kv_bytes = num_blocks * cfg.group * spec.num_kv_heads * cfg.bytes_per_token * len(layer_names)
            eff = pool_counted_ratio(cfg, kv_bytes, pool_total)
            msg += f"; effective capacity vs bf16 with the pool counted: {eff:.2f}x"
            if vllm_config.device_config.device_type != "cpu":
                # GPU: the pool was allocated before memory profiling, so the KV size already excludes it
                msg += "; the pool was allocated before memory profiling, so the KV cache size above already excludes it"
                cc = getattr(vllm_config, "compilation_config", None)
                msg += graph_size_hint(vllm_config.scheduler_config.max_num_seqs,
                                       getattr(cc, "max_cudagraph_capture_size", None),
                                       bool(getattr(vllm_config.model_config, "enforce_eager", False)))
            if pool_total > 0.25 * kv_bytes:
                msg += (
                    f". WARNING: the pool is {pool_total / kv_bytes:.0%} of the KV cache bytes; lower --max-num-seqs"
                    " (or max_num_batched_tokens) to give the memory back to the KV cache"
                )
                sc = vllm_config.scheduler_config
                want = round(0.95 * cfg.ratio_vs(2), 1)
                seqs = max_num_seqs_for_ratio(cfg, want, kv_bytes + pool_total, len(layer_names), spec.num_kv_heads,
                                              sc.max_num_batched_tokens, sc.max_num_seqs)
                if 0 < seqs < sc.max_num_seqs:
                    msg += f" (--max-num-seqs {seqs} would give ~{want:.1f}x bf16 with the pool counted)"
        logger.warning(msg)

    def _step_layout(self, cm, n: int, qsl: np.ndarray):
        """(slot_mapping [T], first blocks of requests with tokens, seq_lens [B]) as host arrays.
        From vLLM's host arrays (no wait on the GPU, see host_plan) once they have matched the
        device tensors: always checked on CPU (free), the first 32 steps on CUDA."""
        hs = None
        if self.host_plan_ok and registry.runner is not None:
            hs = host_step(registry.runner, qsl, cm.num_actual_tokens, self.group)
        if hs is not None and self.cuda is not None and self.host_checks_left <= 0:
            return hs.slot_mapping, hs.first_blocks, hs.seq_lens
        has_tokens = np.diff(qsl) > 0
        slots = cm.slot_mapping[: cm.num_actual_tokens].cpu().numpy()
        first = cm.block_table_tensor[:n, 0].cpu().numpy()[has_tokens]  # padded requests have no tokens
        seq = cm.seq_lens[:n].cpu().numpy()
        if hs is not None:
            self.host_checks_left -= 1
            registry.host_plan_checked += 1
            if not (np.array_equal(hs.slot_mapping, slots) and np.array_equal(hs.first_blocks, first)
                    and np.array_equal(hs.seq_lens[has_tokens], seq[has_tokens])):
                registry.host_plan_mismatch += 1
                self.host_plan_ok = False
                logger.warning("kvarn: vLLM's host arrays disagree with its device slot mapping; reading the "
                               "device tensors from now on (each step waits for the GPU)")
        return slots, first, seq

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata, fast_build: bool = False):
        cm = common_attn_metadata
        n = cm.num_reqs
        slot_mapping = cm.slot_mapping[: cm.num_actual_tokens]
        qsl = cm.query_start_loc_cpu[: n + 1].numpy()
        slots, first, seq = self._step_layout(cm, n, qsl)
        plan = self.pool.plan_step(slots, first)
        dev = cm.slot_mapping.device
        if self.cuda is None:  # CPU: every layer flushes in its own update
            def t(x):
                return torch.from_numpy(x).to(dev)

            return self._metadata(cm, slot_mapping, t(plan.flush_blocks), t(plan.flush_slots), t(plan.write_rows),
                                  t(plan.block_to_slot), None, t(plan.flush_rows) if self.row_slots else None)
        self.cuda.warm_up()  # eager mode has no capture: the first real step compiles the flush kernel
        self.cuda.flush(self.layer_names, plan.flush_blocks, plan.flush_slots, plan.flush_rows)
        b2s, rows = self.cuda.stage(plan.block_to_slot, plan.write_rows)
        route = plan_route(qsl, seq, dev, tile=self.group)
        return self._metadata(cm, slot_mapping, self.cuda.empty, self.cuda.empty, rows, b2s, route)

    def build_for_cudagraph_capture(self, common_attn_metadata: CommonAttentionMetadata):
        """Capture with dummy requests: no pool bookkeeping, no writes, short sequences (fast capture)."""
        cm = common_attn_metadata
        if self.cuda is None:
            return self.build(0, cm)
        self.cuda.warm_up()
        n = cm.num_reqs
        cm.seq_lens.fill_(1)
        route = plan_route(cm.query_start_loc_cpu[: n + 1].numpy(), np.ones(n, dtype=np.int64), cm.slot_mapping.device)
        rows = self.cuda.capture_rows(cm.num_actual_tokens)
        return self._metadata(cm, cm.slot_mapping[: cm.num_actual_tokens], self.cuda.empty, self.cuda.empty, rows,
                              self.cuda.b2s, route)

    @staticmethod
    def _metadata(cm, slot_mapping, flush_blocks, flush_slots, write_rows, block_to_slot, route,
                  flush_rows=None) -> KvarnMetadata:
        return KvarnMetadata(
            num_actual_tokens=cm.num_actual_tokens,
            max_query_len=cm.max_query_len,
            query_start_loc=cm.query_start_loc,
            query_start_loc_cpu=cm.query_start_loc_cpu,
            seq_lens=cm.seq_lens,
            block_table=cm.block_table_tensor,
            slot_mapping=slot_mapping,
            flush_blocks=flush_blocks,
            flush_slots=flush_slots,
            flush_rows=flush_rows,
            write_rows=write_rows,
            block_to_slot=block_to_slot,
            route=route,
        )
