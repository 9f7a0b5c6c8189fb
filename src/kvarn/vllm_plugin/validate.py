"""Front-end checks for a kvarn run: clear errors at startup, never a silent fallback.

``prepare_engine_args`` runs before vLLM builds its config (fills in / checks --block-size);
``validate_vllm_config`` runs on the built VllmConfig (model and feature checks).
"""

from __future__ import annotations

import functools
import os

from kvarn.config import (KERNEL_ENV_CHOICES, NUMERICS, SINK_MODES, KvarnConfig, check_dense_min, check_mq_group,
                          kernel_env)


DEFAULT_MAX_NUM_SEQS = 256


class KvarnConfigError(ValueError):
    """A setting kvarn cannot serve. The message is one sentence naming the fix."""


# one wording per unsupported feature, shared by the front-end and the per-layer checks
UNSUPPORTED = {
    "mla": "MLA models (latent KV cache) are not supported",
    "sparse": "sparse attention is not supported",
    "sliding": "sliding-window attention layers are not supported",
    "sinks": "attention sinks (learned per-head logits) are not supported",
    "hybrid": "hybrid models (Mamba / linear-attention layers) are not supported",
    "encdec": "encoder-decoder models are not supported",
    "attnfree": "attention-free models have no KV cache to quantize",
    "spec": "speculative decoding is not supported yet (remove --speculative-config)",
    "kvconn": "KV connectors / KV offloading / disaggregated prefill are not supported",
    "cp": "decode/prefill context parallelism is not supported",
}


def _refuse(dtype: str, problems: list[str]) -> None:
    if problems:
        raise KvarnConfigError(f"--kv-cache-dtype {dtype}: " + "; ".join(problems) + ".")


def _head_dim_problem(dtype: str, head_dim: int) -> list[str]:
    try:
        KvarnConfig.from_name(dtype, head_dim=head_dim)
    except ValueError as e:
        return [str(e)]
    return []


def env_problems() -> list[str]:
    """kvarn's environment settings that name no valid value: checked by the front end and again by
    every worker when it reads them (``builder.kvarn_config``)."""
    out = []
    for var, valid in (("KVARN_SINK", SINK_MODES), ("KVARN_NUMERICS", tuple(NUMERICS))):
        val = os.environ.get(var)
        if val and val not in valid:
            out.append(f"{var} must be one of {', '.join(valid)} (got {val!r})")
    for var, check in (("KVARN_MQ_GROUP", check_mq_group), ("KVARN_DENSE_MIN", check_dense_min),
                       *((v, functools.partial(kernel_env, v)) for v in KERNEL_ENV_CHOICES)):
        val = os.environ.get(var)
        if val:
            try:
                check(val)  # the same rule the workers' routing / kernels apply when they read the variable
            except ValueError as e:
                out.append(str(e))
    return out


def check_layer_supported(sel) -> None:
    """Per layer, in the worker (sel: vLLM's AttentionSelectorConfig); raises KvarnConfigError."""
    flags = [
        ("use_mla", "mla"), ("use_sparse", "sparse"), ("has_sliding_window", "sliding"), ("has_sink", "sinks"),
        ("use_kv_connector", "kvconn"), ("use_dcp", "cp"), ("use_pcp", "cp"),
    ]
    problems = list(dict.fromkeys(UNSUPPORTED[key] for attr, key in flags if getattr(sel, attr, False)))
    if str(getattr(sel, "attn_type", "decoder")).lower().split(".")[-1] != "decoder":
        problems.append(f"attention type {sel.attn_type!r} is not supported (decoder-only models)")
    _refuse(sel.kv_cache_dtype, problems + _head_dim_problem(sel.kv_cache_dtype, sel.head_size))


def prepare_engine_args(args) -> None:
    """args: vllm EngineArgs with a kvarn kv_cache_dtype. Sets block_size to the preset's tile
    length when omitted; refuses a different one."""
    cfg = KvarnConfig.from_name(args.kv_cache_dtype)
    # The pool is released through the V1 runner's _update_states (patches.py, patch 4); vLLM 0.26
    # defaults dense models to the V2 runner, which that hook does not cover: pick V1, refuse an explicit V2.
    v2 = os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "").strip()
    if v2 not in ("", "0"):
        raise KvarnConfigError(
            f"--kv-cache-dtype {cfg.kv_cache_dtype} runs on vLLM's V1 model runner (its fp16 pool is released "
            f"through it) and needs VLLM_USE_V2_MODEL_RUNNER unset or 0 (got {v2!r}, which asks vLLM for V2)."
        )
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
    # every running sequence may hold two fp16 blocks in the pool: keep vLLM's large GPU default
    # (up to 1024) from spending tens of GiB on it unless the user asks
    if getattr(args, "max_num_seqs", 0) is None:
        args.max_num_seqs = DEFAULT_MAX_NUM_SEQS
    if args.block_size is None:
        args.block_size = cfg.group
    elif int(args.block_size) != cfg.group:
        raise KvarnConfigError(
            f"--kv-cache-dtype {cfg.kv_cache_dtype} stores {cfg.group}-token tiles and needs "
            f"--block-size {cfg.group} (got {args.block_size}); omit --block-size to get it."
        )


def _sliding_layers(hf_text_config) -> bool:
    layer_types = getattr(hf_text_config, "layer_types", None) or ()
    if any("sliding" in str(t) or "chunked" in str(t) for t in layer_types):
        return True
    use_sw = getattr(hf_text_config, "use_sliding_window", None)
    if use_sw is False:
        return False
    if layer_types:  # every layer named, none sliding
        return False
    return bool(getattr(hf_text_config, "sliding_window", None)) and use_sw is not False and (
        getattr(hf_text_config, "model_type", "") not in ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe")
    )


def validate_vllm_config(config) -> None:
    """config: vllm VllmConfig. Raises KvarnConfigError listing what is unsupported."""
    dtype = config.cache_config.cache_dtype
    cfg = KvarnConfig.from_name(dtype)
    problems = []
    mc = config.model_config
    if mc is not None:
        for attr, key in (("use_mla", "mla"), ("is_hybrid", "hybrid"), ("is_encoder_decoder", "encdec"),
                          ("is_attention_free", "attnfree")):
            if getattr(mc, attr, False):
                problems.append(UNSUPPORTED[key])
        if _sliding_layers(mc.hf_text_config):
            problems.append(UNSUPPORTED["sliding"])
        problems += _head_dim_problem(dtype, mc.get_head_size())
    if config.speculative_config is not None:
        problems.append(UNSUPPORTED["spec"])
    kvt = getattr(config, "kv_transfer_config", None)
    if kvt is not None and getattr(kvt, "is_kv_transfer_instance", True):
        problems.append(UNSUPPORTED["kvconn"])
    pc = config.parallel_config
    if getattr(pc, "decode_context_parallel_size", 1) > 1 or getattr(pc, "prefill_context_parallel_size", 1) > 1:
        problems.append(UNSUPPORTED["cp"])
    if config.cache_config.block_size != cfg.group:
        problems.append(f"block size must be {cfg.group} for {cfg.kv_cache_dtype} (got {config.cache_config.block_size})")
    _refuse(dtype, problems + env_problems())
