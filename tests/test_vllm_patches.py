"""Every patched vLLM symbol is where kvarn expects it; registration is idempotent; the dtype
strings reach argparse, pydantic and the selector; front-end validation gives clear errors."""

from __future__ import annotations

import importlib
import inspect
import os
from types import SimpleNamespace

import pytest

from vllm_e2e_util import needs_vllm

pytestmark = needs_vllm


def _resolve(module: str, attr: str):
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def test_patched_symbols_exist_with_expected_shape():
    from kvarn.vllm_plugin.patches import PATCH_TARGETS

    for module, attr in PATCH_TARGETS:
        obj = _resolve(module, attr)  # AttributeError / ImportError = the symbol moved: update patches.py
        assert obj is not None, (module, attr)
    import typing

    from vllm.config.cache import CacheConfig

    assert "cache_dtype" in CacheConfig.__dataclass_fields__
    assert typing.get_origin(_resolve("vllm.v1.attention.selector", "CacheDType")) is typing.Literal
    from vllm.engine.arg_utils import EngineArgs

    assert "block_size" in EngineArgs.__dataclass_fields__ and "kv_cache_dtype" in EngineArgs.__dataclass_fields__
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    assert "scheduler_output" in inspect.signature(GPUModelRunner._update_states).parameters
    from vllm.platforms import current_platform

    params = inspect.signature(type(current_platform).get_attn_backend_cls).parameters
    assert list(params)[:2] == ["selected_backend", "attn_selector_config"]
    from vllm.v1.attention.selector import AttentionSelectorConfig

    for field in ("kv_cache_dtype", "head_size", "use_mla", "has_sliding_window", "attn_type"):
        assert field in AttentionSelectorConfig._fields
    from vllm.v1.attention.backend import AttentionBackend

    assert hasattr(AttentionBackend, "customize_spec") or hasattr(AttentionBackend, "get_kv_cache_shape")


def test_register_is_idempotent_and_wraps_once():
    from vllm.engine.arg_utils import EngineArgs
    from vllm.platforms import current_platform

    import kvarn.vllm_plugin as plugin
    from kvarn.vllm_plugin import patches

    plugin.register()
    first = (EngineArgs.create_engine_config, type(current_platform).get_attn_backend_cls)
    patches.apply_all()
    assert (EngineArgs.create_engine_config, type(current_platform).get_attn_backend_cls) == first
    assert getattr(EngineArgs.create_engine_config, "_kvarn_wrapped", False)


def test_dtype_strings_accepted_everywhere():
    import typing

    import kvarn.vllm_plugin as plugin
    from kvarn.config import kv_cache_dtype_names

    plugin.register()
    from vllm.config.cache import CacheConfig
    from vllm.utils.torch_utils import STR_DTYPE_TO_TORCH_DTYPE
    from vllm.v1.attention import selector

    for name in kv_cache_dtype_names():
        assert CacheConfig(cache_dtype=name).cache_dtype == name
        assert name in typing.get_args(selector.CacheDType)
        assert STR_DTYPE_TO_TORCH_DTYPE[name].itemsize == 1
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())
    args = parser.parse_args(["--kv-cache-dtype", "kvarn_k4v2_g128"])
    assert args.kv_cache_dtype == "kvarn_k4v2_g128"
    with pytest.raises(SystemExit):
        parser.parse_args(["--kv-cache-dtype", "kvarn_k3v3_g128"])


def test_backend_selection_and_layer_refusals():
    import kvarn.vllm_plugin as plugin

    plugin.register()
    from vllm.platforms import current_platform
    from vllm.v1.attention.selector import AttentionSelectorConfig
    import torch

    sel = AttentionSelectorConfig(head_size=128, dtype=torch.bfloat16, kv_cache_dtype="kvarn_k4v4_g64", block_size=64)
    path = type(current_platform).get_attn_backend_cls(None, sel)
    assert path.endswith("Kvarn_K4V4_G64_Backend")
    cls = _resolve(*path.rsplit(".", 1))
    spec_bytes = cls.config(128).bytes_per_token
    assert spec_bytes == 146 and cls.get_supported_kernel_block_sizes() == [64] and cls.get_name() == "CUSTOM"
    for kw, msg in [
        (dict(use_mla=True), "MLA"),
        (dict(has_sliding_window=True), "sliding-window"),
        (dict(head_size=96), "head_dim 96"),
        (dict(use_kv_connector=True), "KV connectors"),
    ]:
        with pytest.raises(ValueError, match=msg):
            type(current_platform).get_attn_backend_cls(None, sel._replace(**kw))
    auto = sel._replace(kv_cache_dtype="auto")
    assert "Kvarn" not in type(current_platform).get_attn_backend_cls(None, auto)


def test_customize_spec_gives_the_record_cell():
    import dataclasses

    import torch
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    from kvarn.vllm_plugin.backend import Kvarn_K4V2_G128_Backend as B

    spec = FullAttentionSpec(block_size=128, num_kv_heads=8, head_size=128, dtype=torch.bfloat16)
    out = B.customize_spec(spec)
    assert out.dtype == torch.uint8 and out.page_size_bytes == 128 * 8 * 108
    assert spec.page_size_bytes / out.page_size_bytes == pytest.approx(512 / 108)
    assert dataclasses.replace(out).page_size_bytes == out.page_size_bytes


def _cfg(**model):
    m = dict(use_mla=False, is_hybrid=False, is_encoder_decoder=False, is_attention_free=False,
             hf_text_config=SimpleNamespace(model_type="llama"), get_head_size=lambda: 128)
    m.update(model)
    return SimpleNamespace(
        cache_config=SimpleNamespace(cache_dtype="kvarn_k4v2_g128", block_size=128),
        model_config=SimpleNamespace(**m),
        speculative_config=None,
        kv_transfer_config=None,
        parallel_config=SimpleNamespace(decode_context_parallel_size=1, prefill_context_parallel_size=1),
    )


@pytest.mark.parametrize(
    "model,msg",
    [
        (dict(is_hybrid=True), "hybrid models"),
        (dict(is_encoder_decoder=True), "encoder-decoder"),
        (dict(is_attention_free=True), "attention-free"),
        (dict(use_mla=True), "MLA"),
        (dict(hf_text_config=SimpleNamespace(layer_types=["sliding_attention", "full_attention"])), "sliding-window"),
        (dict(get_head_size=lambda: 80), "head_dim 80"),
    ],
)
def test_validate_refuses_unsupported_models(model, msg):
    from kvarn.vllm_plugin.validate import KvarnConfigError, validate_vllm_config

    with pytest.raises(KvarnConfigError, match=msg):
        validate_vllm_config(_cfg(**model))


def test_validate_accepts_plain_decoder_and_qwen2_unused_window():
    from kvarn.vllm_plugin.validate import validate_vllm_config

    validate_vllm_config(_cfg())
    validate_vllm_config(_cfg(hf_text_config=SimpleNamespace(model_type="qwen2", sliding_window=32768, use_sliding_window=False)))


@pytest.mark.parametrize("var,val", [("KVARN_SINK", "int8"), ("KVARN_NUMERICS", "best"), ("KVARN_MQ_GROUP", "3"),
                                     ("KVARN_MQ_GROUP", "04"), ("KVARN_DENSE_MIN", "1"), ("KVARN_DENSE_MIN", "many"),
                                     ("KVARN_DECODE_POOL_BN", "48"), ("KVARN_DECODE_TRIM", "yes"),
                                     ("KVARN_DECODE_WARPS", "3"), ("KVARN_FLUSH_WARPS", "3")])
def test_validate_refuses_bad_kvarn_settings(monkeypatch, var, val):
    from kvarn.vllm_plugin.builder import kvarn_config
    from kvarn.vllm_plugin.validate import KvarnConfigError, validate_vllm_config

    monkeypatch.setenv(var, val)
    with pytest.raises(KvarnConfigError, match=f"{var} must be .*got '{val}'"):
        validate_vllm_config(_cfg())
    with pytest.raises(ValueError, match="must be |valid: "):  # the worker's own read fails as loudly
        kvarn_config("kvarn_k4v2_g128", 128)


def test_kvarn_sink_setting_reaches_the_config(monkeypatch):
    from kvarn.vllm_plugin.builder import kvarn_config
    from kvarn.vllm_plugin.validate import validate_vllm_config

    monkeypatch.setenv("KVARN_SINK", "quantized")
    validate_vllm_config(_cfg())
    assert kvarn_config("kvarn_k4v2_g128", 128).sink == "quantized"
    monkeypatch.delenv("KVARN_SINK")
    assert kvarn_config("kvarn_k4v2_g128", 128).sink == "fp16"


def test_block_size_defaults_to_tile_and_mismatch_is_refused():
    from kvarn.vllm_plugin.validate import KvarnConfigError, prepare_engine_args

    a = SimpleNamespace(kv_cache_dtype="kvarn_k4v2_g64", block_size=None, max_num_seqs=None)
    prepare_engine_args(a)
    assert a.block_size == 64 and a.max_num_seqs == 256  # pool-aware default
    b = SimpleNamespace(kv_cache_dtype="kvarn_k4v2_g64", block_size=64, max_num_seqs=8)
    prepare_engine_args(b)
    assert b.max_num_seqs == 8
    with pytest.raises(KvarnConfigError, match="needs --block-size 128"):
        prepare_engine_args(SimpleNamespace(kv_cache_dtype="kvarn_k4v2_g128", block_size=16))


def test_v2_model_runner_is_refused_and_v1_chosen(monkeypatch):
    """kvarn's pool is released through the V1 runner: an explicit V2 request fails at startup, naming the variable;
    unset (vLLM 0.26 would pick V2 for dense models) or 0 gives V1."""
    from kvarn.vllm_plugin.validate import KvarnConfigError, prepare_engine_args

    def args():
        return SimpleNamespace(kv_cache_dtype="kvarn_k4v2_g128", block_size=None, max_num_seqs=None)

    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    a = args()
    with pytest.raises(KvarnConfigError, match="needs VLLM_USE_V2_MODEL_RUNNER unset or 0 \\(got '1'"):
        prepare_engine_args(a)
    assert a.block_size is None  # refused before anything was changed
    for value in (None, "0"):
        if value is None:
            monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
        else:
            monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", value)
        a = args()
        prepare_engine_args(a)
        assert os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "0" and a.block_size == 128


def test_graph_size_hint_only_when_decode_batches_outgrow_the_graphs():
    """On CUDA the startup line tells the user how to graph decode steps larger than vLLM's capture limit."""
    from vllm.config import CompilationConfig

    from kvarn.vllm_plugin.builder import graph_size_hint

    assert "max_cudagraph_capture_size" in CompilationConfig.__dataclass_fields__  # the setting the hint names
    hint = graph_size_hint(1024, 512, eager=False)
    assert "at most 512 sequences" in hint and '{"max_cudagraph_capture_size": 1024}' in hint
    assert graph_size_hint(256, 512, eager=False) == ""
    assert graph_size_hint(1024, 512, eager=True) == ""  # no graphs at all: nothing to enlarge
    assert graph_size_hint(1024, None, eager=False) == ""  # unknown limit: say nothing


def test_capacity_line_counts_the_pool_and_names_a_max_num_seqs(caplog):
    """The startup line of the H200 bursts' engine (Qwen3-8B shape, 18,628 blocks, 2,184 pool slots): the pool-counted
    ratio on CUDA too, and the --max-num-seqs that would reach ~4.5x (what kvarn plan would size)."""
    import logging

    from kvarn.config import KvarnConfig
    from kvarn.vllm_plugin.builder import KvarnMetadataBuilder

    cfg = KvarnConfig.from_name("kvarn_k4v2_g128")
    this = SimpleNamespace(num_slots=2184, row_slots=0)
    spec = SimpleNamespace(num_kv_heads=8, head_size=128)
    vc = SimpleNamespace(
        scheduler_config=SimpleNamespace(max_num_seqs=1024, max_num_batched_tokens=16384),
        device_config=SimpleNamespace(device_type="cuda"),
        compilation_config=SimpleNamespace(max_cudagraph_capture_size=1024),
        model_config=SimpleNamespace(enforce_eager=False),
    )
    with caplog.at_level(logging.WARNING, logger="vllm.kvarn"):
        KvarnMetadataBuilder._log_capacity(this, cfg, spec, [f"l{i}" for i in range(36)], vc, 18628)
    line = caplog.records[-1].getMessage()
    assert "effective capacity vs bf16 with the pool counted: 3.05x" in line
    assert "WARNING: the pool is 56% of the KV cache bytes" in line
    assert "--max-num-seqs 80 would give ~4.5x bf16" in line
    vc.scheduler_config.max_num_seqs = 64  # already small enough: no hint
    this.num_slots = 2 * 64 + 128 + 8
    with caplog.at_level(logging.WARNING, logger="vllm.kvarn"):
        KvarnMetadataBuilder._log_capacity(this, cfg, spec, [f"l{i}" for i in range(36)], vc, 18628)
    assert "would give" not in caplog.records[-1].getMessage()
