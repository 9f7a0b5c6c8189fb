"""The kvarn attention backend for vLLM (imported by vLLM workers; imports vLLM).

Cache page: uint8, one tile record per (block, KV head) of ``cfg.record_bytes`` bytes, exposed to
vLLM as ``block_size`` cells of ``cfg.bytes_per_token`` bytes, i.e. kv_cache [num_blocks, Hkv, G, C].
Side state per layer: fp16 pool ``[num_slots, G, Hkv, D]`` of rotated K and V rows for sinks, tails
and tiles that have not been flushed yet (see :mod:`kvarn.vllm_plugin.pool`).

Per step: the metadata builder (:mod:`kvarn.vllm_plugin.builder`) plans the step once for all layers
(which tiles to flush, which pool row each new token goes to; on CUDA it also runs the flush); each
layer then writes its new rotated K/V rows into the pool and attends (:mod:`kvarn.vllm_plugin.layer_cache`:
the PyTorch reference on CPU, Triton kernels plus FlashAttention for fresh prompts on CUDA).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import ClassVar

import torch
from vllm.v1.attention.backend import AttentionBackend, AttentionImpl, AttentionType

from kvarn.config import (DEFAULT_PRESET, PRESETS, SUPPORTED_HEAD_DIMS, KvarnConfig, kv_cache_dtype_names,
                          total_pool_slots)
from kvarn.vllm_plugin.builder import KvarnMetadata, KvarnMetadataBuilder, _vllm_config, kvarn_config
from kvarn.vllm_plugin.layer_cache import LayerCache
from kvarn.vllm_plugin.pool import registry
from kvarn.vllm_plugin.patches import backend_class_name

logger = logging.getLogger("vllm.kvarn")

try:  # cpu-0.32 / 0.33
    from vllm.v1.kv_cache_interface import KVCacheLayout
except ImportError:  # 0.26
    KVCacheLayout = None


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

    def prefill(q, k, v, cu, max_len, scale, cu_k=None, max_k=None, out=None):  # causal: bottom-right aligned
        out = torch.empty_like(q) if out is None else out
        flash_attn_varlen_func(q=q, k=k, v=v, out=out, cu_seqlens_q=cu, max_seqlen_q=max_len,
                               cu_seqlens_k=cu if cu_k is None else cu_k, max_seqlen_k=max_k or max_len,
                               softmax_scale=scale, causal=True, **extra)
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
        sc = _vllm_config().scheduler_config
        self.num_slots = total_pool_slots(self.cfg, sc.max_num_seqs, sc.max_num_batched_tokens)
        self.cache: LayerCache | None = None

    def _layer_cache(self, device) -> LayerCache:
        """The layer's pool, sized to the process pool's slot count (known once the builder exists)."""
        slots = registry.pool.total_slots if registry.pool is not None else self.num_slots
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
        cache.update(records, key, value, md.flush_blocks, md.flush_slots, md.write_rows, md.flush_rows)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None, output_block_scale=None):
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("kvarn: fused output quantization is not supported")
        if attn_metadata is None:  # profiling / warm-up
            return output
        md: KvarnMetadata = attn_metadata
        n = md.num_actual_tokens
        cache = self._layer_cache(query.device)
        # on CUDA the decode kernel stores straight into vLLM's output buffer
        o_view = output[:n].view(query[:n].shape) if output.is_cuda and output.is_contiguous() else None
        out = cache.attend(
            self._records(kv_cache), query[:n], key[:n], value[:n], md.block_to_slot, md.block_table,
            md.seq_lens, md.query_start_loc_cpu, self.scale,
            quantize_new_tiles=not (registry.pool is not None and registry.pool.keep_fp16), route=md.route,
            out=o_view,
        )
        if out is not o_view:
            output[:n] = out.reshape(output[:n].shape).to(output.dtype)
        return output
