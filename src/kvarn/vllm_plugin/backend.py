"""The kvarn attention backend for vLLM (imported by vLLM workers; imports vLLM).

Cache page: uint8, one tile record per (block, KV head) of ``cfg.record_bytes`` bytes, exposed to
vLLM as ``block_size`` cells of ``cfg.bytes_per_token`` bytes, i.e. kv_cache [num_blocks, Hkv, G, C].
Side state per layer: fp16 pool ``[num_slots, G, Hkv, D]`` of rotated K and V rows for sinks, tails
and tiles that have not been flushed yet (see :mod:`kvarn.vllm_plugin.pool`).

Per step: the metadata builder plans the step once for all layers (which tiles to flush, which
pool row each new token goes to); each layer then (1) flushes: pool rows -> encode -> records,
(2) writes its new rotated K/V rows into the pool, (3) attends with the cache-consistent semantics of
:mod:`kvarn.reference.paged_attention`. The CPU path runs :func:`kvarn.reference.paged_attention`; a CUDA path plugs in
Triton kernels from :mod:`kvarn.kernels` where available.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionImpl,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
)

from kvarn.config import (
    DEFAULT_PRESET,
    PRESETS,
    SUPPORTED_HEAD_DIMS,
    KvarnConfig,
    kv_cache_dtype_names,
    pool_bytes_per_layer,
    pool_slots,
)
from kvarn.vllm_plugin.host_plan import host_step
from kvarn.vllm_plugin.layer_cache import LayerCache
from kvarn.vllm_plugin.routing import StepRoute, plan_route
from kvarn.vllm_plugin.pool import registry
from kvarn.vllm_plugin.patches import backend_class_name

logger = logging.getLogger("vllm.kvarn")

try:  # cpu-0.32 / 0.33
    from vllm.v1.kv_cache_interface import KVCacheLayout
except ImportError:  # 0.26
    KVCacheLayout = None


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
    """The format of a layer; numerics from ``KVARN_NUMERICS`` (reference|improved) if set."""
    return KvarnConfig.from_name(kv_cache_dtype, head_dim=head_dim, numerics=os.environ.get("KVARN_NUMERICS") or None)


def num_pool_slots(vllm_config, group: int) -> int:
    sc = vllm_config.scheduler_config
    return pool_slots(sc.max_num_seqs, sc.max_num_batched_tokens, group)


class KvarnBackend(AttentionBackend):
    """Base class; one subclass per preset (``Kvarn_K4V2_G128_Backend`` ...) fixes ``PRESET``."""

    PRESET: ClassVar[str] = DEFAULT_PRESET
    forward_includes_kv_cache_update: bool = False
    accept_output_buffer: bool = True
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16, torch.float32]
    supported_kv_cache_dtypes: ClassVar[list] = ["auto", *kv_cache_dtype_names()]

    @classmethod
    def config(cls, head_dim: int = 128) -> KvarnConfig:
        return KvarnConfig.from_name(cls.PRESET, head_dim=head_dim)

    @staticmethod
    def get_name() -> str:
        return "CUSTOM"

    @staticmethod
    def get_impl_cls():
        return KvarnImpl

    @staticmethod
    def get_builder_cls():
        return KvarnMetadataBuilder

    @classmethod
    def get_supported_kernel_block_sizes(cls, kv_cache_spec=None):
        return [PRESETS[cls.PRESET][2]]

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return list(SUPPORTED_HEAD_DIMS)

    @classmethod
    def customize_spec(cls, spec):
        """cpu-0.32/0.33 page hook: a page is [H, N, C] with C = bytes per token per head."""
        cfg = cls.config(spec.head_size)
        return dataclasses.replace(spec, dtype=torch.uint8, state_content_bytes=cfg.bytes_per_token)

    @classmethod
    def supported_kv_cache_layouts(cls):
        if KVCacheLayout is None:
            return None
        # both keep each (block, head) record contiguous
        return (KVCacheLayout.LBHNC, KVCacheLayout.BLHNC)

    @classmethod
    def get_kv_cache_shape(cls, num_blocks, block_size, num_kv_heads, head_size, cache_dtype_str="auto"):
        """0.23/0.26 allocation shape (uint8); ignores cache_dtype_str, which is "auto" there."""
        return (num_blocks, num_kv_heads, block_size, cls.config(head_size).bytes_per_token)

    @classmethod
    def is_mla(cls) -> bool:
        return False

    @classmethod
    def supports_sink(cls) -> bool:
        return False

    @classmethod
    def supports_sliding_window(cls) -> bool:
        return False

    @classmethod
    def supports_kv_connector(cls) -> bool:
        return False

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type == AttentionType.DECODER


def _make_preset_backends() -> dict[str, type[KvarnBackend]]:
    out = {}
    for preset in PRESETS:
        name = backend_class_name(preset)
        out[name] = type(name, (KvarnBackend,), {"PRESET": preset, "__module__": __name__})
    return out


globals().update(_make_preset_backends())


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
        self.num_slots = num_pool_slots(vllm_config, self.group)
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
        self.pool = registry.create(
            self.num_slots, self.group, retire_sinks=prefix_caching, keep_fp16=keep_fp16, num_blocks=int(num_blocks or 1024)
        )
        self._log_capacity(kv_cache_spec, layer_names, vllm_config)
        self.host_plan_ok = os.environ.get("KVARN_HOST_PLAN", "1") != "0"
        self.host_checks_left = 32
        self.cuda = None
        if torch.device(device).type == "cuda":
            cfg = kvarn_config(vllm_config.cache_config.cache_dtype, kv_cache_spec.head_size)
            sc = vllm_config.scheduler_config
            self.cuda = registry.cuda_state(cfg, device, int(num_blocks or 1024),
                                            max(sc.max_num_batched_tokens, sc.max_num_seqs) + 1024)

    def _log_capacity(self, spec, layer_names, vllm_config) -> None:
        dtype = vllm_config.cache_config.cache_dtype
        cfg = kvarn_config(dtype, spec.head_size)
        per_layer = pool_bytes_per_layer(self.num_slots, cfg.group, spec.num_kv_heads, spec.head_size)
        pool_total = per_layer * len(layer_names)
        msg = (
            f"kvarn: {cfg.kv_cache_dtype} (numerics={cfg.numerics.name}): {cfg.bytes_per_token} B/token/KV head, "
            f"{spec.num_kv_heads} KV heads in this worker (tensor-parallel rank {_tp_rank()}), "
            f"{cfg.ratio_vs(2):.2f}x smaller than bf16; fp16 sink/tail pool {self.num_slots} slots "
            f"(min(2 x max_num_seqs={vllm_config.scheduler_config.max_num_seqs} + batch tiles + 8, KV blocks)) x "
            f"{len(layer_names)} layers = {pool_total / 2**20:.1f} MiB (pool_bytes={pool_total}), not included in "
            f"the KV cache size vLLM prints; at most {vllm_config.scheduler_config.max_num_seqs} concurrent sequences"
        )
        num_blocks = getattr(vllm_config.cache_config, "num_gpu_blocks", None)
        if num_blocks:
            kv_bytes = num_blocks * cfg.group * spec.num_kv_heads * cfg.bytes_per_token * len(layer_names)
            if vllm_config.device_config.device_type == "cpu":
                # CPU: the KV budget (VLLM_CPU_KVCACHE_SPACE) excludes the pool, so count it here
                eff = cfg.ratio_vs(2) * kv_bytes / (kv_bytes + pool_total)
                msg += f"; effective capacity vs bf16 with the pool counted: {eff:.2f}x"
            else:
                # GPU: the pool was allocated before memory profiling, so the KV size already excludes it
                msg += "; the pool was allocated before memory profiling, so the KV cache size above already excludes it"
            if pool_total > 0.25 * kv_bytes:
                msg += (
                    f". WARNING: the pool is {pool_total / kv_bytes:.0%} of the KV cache bytes; lower --max-num-seqs"
                    " (or max_num_batched_tokens) to give the memory back to the KV cache"
                )
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
                                  t(plan.block_to_slot), None)
        self.cuda.flush(self.layer_names, plan.flush_blocks, plan.flush_slots)
        b2s, rows = self.cuda.stage(plan.block_to_slot, plan.write_rows)
        route = plan_route(qsl, seq, dev)
        return self._metadata(cm, slot_mapping, self.cuda.empty, self.cuda.empty, rows, b2s, route)

    def build_for_cudagraph_capture(self, common_attn_metadata: CommonAttentionMetadata):
        """Capture with dummy requests: no pool bookkeeping, no writes, short sequences (fast capture)."""
        cm = common_attn_metadata
        if self.cuda is None:
            return self.build(0, cm)
        n = cm.num_reqs
        cm.seq_lens.fill_(1)
        route = plan_route(cm.query_start_loc_cpu[: n + 1].numpy(), np.ones(n, dtype=np.int64), cm.slot_mapping.device)
        rows = self.cuda.capture_rows(cm.num_actual_tokens)
        return self._metadata(cm, cm.slot_mapping[: cm.num_actual_tokens], self.cuda.empty, self.cuda.empty, rows,
                              self.cuda.b2s, route)

    @staticmethod
    def _metadata(cm, slot_mapping, flush_blocks, flush_slots, write_rows, block_to_slot, route) -> KvarnMetadata:
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
            write_rows=write_rows,
            block_to_slot=block_to_slot,
            route=route,
        )


def _flash_prefill(device):
    """vLLM's FlashAttention varlen call for fresh prompts on CUDA (None elsewhere: SDPA fallback)."""
    if torch.device(device).type != "cuda":
        return None
    try:
        from vllm.v1.attention.backends.fa_utils import flash_attn_varlen_func, get_flash_attn_version
    except ImportError:
        logger.warning("kvarn: vLLM's FlashAttention is not available; fresh prompts use torch SDPA (slower)")
        return None
    version = get_flash_attn_version()
    extra = {} if version is None else {"fa_version": version}

    def prefill(q, k, v, cu, max_len, scale):
        out = torch.empty_like(q)
        flash_attn_varlen_func(q=q, k=k, v=v, out=out, cu_seqlens_q=cu, max_seqlen_q=max_len, cu_seqlens_k=cu,
                               max_seqlen_k=max_len, softmax_scale=scale, causal=True, **extra)
        return out

    return prefill


class KvarnImpl(AttentionImpl[KvarnMetadata]):
    def __init__(
        self,
        num_heads: int,
        head_size: int,
        scale: float,
        num_kv_heads: int | None = None,
        alibi_slopes=None,
        sliding_window: int | None = None,
        kv_cache_dtype: str = "auto",
        logits_soft_cap: float | None = None,
        attn_type: str = AttentionType.DECODER,
        kv_sharing_target_layer_name: str | None = None,
        **kwargs,
    ) -> None:
        unsupported = []
        if alibi_slopes is not None:
            unsupported.append("ALiBi")
        if sliding_window not in (None, -1):
            unsupported.append("sliding-window attention")
        if logits_soft_cap:
            unsupported.append("logit soft-capping")
        if attn_type != AttentionType.DECODER:
            unsupported.append(f"attention type {attn_type}")
        if kv_sharing_target_layer_name is not None:
            unsupported.append("cross-layer KV sharing")
        if kwargs.get("sinks") is not None:
            unsupported.append("attention sinks")
        if unsupported:
            raise ValueError(f"kvarn backend: {', '.join(unsupported)} not supported by {kv_cache_dtype}.")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads or num_heads
        self.kv_cache_dtype = kv_cache_dtype
        self.sliding_window = None
        self.kv_sharing_target_layer_name = None
        dtype_name = kv_cache_dtype if kv_cache_dtype.startswith("kvarn_") else DEFAULT_PRESET
        self.cfg = kvarn_config(dtype_name, head_size)
        self.num_slots = num_pool_slots(_vllm_config(), self.cfg.group)
        self.cache: LayerCache | None = None

    def _layer_cache(self, device) -> LayerCache:
        """The layer's pool, sized to the process pool's slot count (known once the builder exists)."""
        slots = registry.pool.num_slots if registry.pool is not None else self.num_slots
        if self.cache is None:
            self.cache = LayerCache(self.cfg, self.num_kv_heads, slots, device, prefill_fn=_flash_prefill(device))
        else:
            self.cache.resize(slots, device)
        return self.cache

    def process_weights_after_loading(self, act_dtype: torch.dtype) -> None:
        # allocate now so the GPU memory profiler charges the pool to non-KV memory
        self._layer_cache(_vllm_config().device_config.device)

    def _records(self, kv_cache: torch.Tensor) -> torch.Tensor:
        """kv_cache [num_blocks, Hkv, G, C] uint8 -> [num_blocks, Hkv, R] view."""
        if kv_cache.dtype != torch.uint8 or kv_cache.dim() != 4 or kv_cache.shape[1] != self.num_kv_heads:
            raise ValueError(
                f"kvarn expects a uint8 KV cache [blocks, {self.num_kv_heads}, G, C], got "
                f"{kv_cache.dtype} {tuple(kv_cache.shape)}: the page-size hook did not apply"
            )
        return kv_cache.flatten(2)

    @staticmethod
    def _metadata(layer):
        from vllm.forward_context import get_forward_context

        md = get_forward_context().attn_metadata
        if isinstance(md, list):
            md = md[0]
        if isinstance(md, dict):
            md = md.get(layer.layer_name)
        return md

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
        md = self._metadata(layer)
        if md is None or kv_cache.numel() == 0:
            return
        cache = self._layer_cache(key.device)
        records = self._records(kv_cache)
        if registry.cuda is not None:
            registry.cuda.register(layer.layer_name, cache, records)
        cache.update(records, key, value, md.flush_blocks, md.flush_slots, md.write_rows)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None, output_block_scale=None):
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("kvarn: fused output quantization is not supported")
        if attn_metadata is None:  # profiling / warm-up
            return output
        md: KvarnMetadata = attn_metadata
        n = md.num_actual_tokens
        cache = self._layer_cache(query.device)
        out = cache.attend(
            self._records(kv_cache), query[:n], key[:n], value[:n], md.block_to_slot, md.block_table,
            md.seq_lens, md.query_start_loc_cpu, self.scale,
            quantize_new_tiles=not (registry.pool is not None and registry.pool.keep_fp16), route=md.route,
        )
        output[:n] = out.reshape(output[:n].shape).to(output.dtype)
        return output
