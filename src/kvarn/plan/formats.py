"""KV-cache formats the planner compares: bytes per token and the kernel each one runs on.

Bytes per token per KV head (K and V together, scales included) at head_dim D:

=========================  =====================================================  ===========
format                     bytes / token / head                                    D = 128
=========================  =====================================================  ===========
bf16 / fp16 (auto)         2 * D * 2                                               512
fp8 (e4m3 / e5m2)          2 * D * 1                                               256
int8_per_token_head        2 * D + 2 * 4 (one fp32 scale for K, one for V)         264
int4_per_token_head        2 * D / 2 + 2 * 4                                       136
turboquant_k8v4            K: D (fp8)            V: D*4/8 + 4 (fp16 scale, zero)   196
turboquant_4bit_nc         K: D*4/8 + 2 (norm)   V: D*4/8 + 4                      134
turboquant_k3v4_nc         K: ceil(D*3/8) + 2    V: D*4/8 + 4                      118
turboquant_3bit_nc         K: ceil(D*3/8) + 2    V: ceil(D*3/8) + 4                102
kvarn_*                    KvarnConfig.bytes_per_token (kvarn.config)              108 (k4v2_g128)
=========================  =====================================================  ===========

int4_per_token_head: 2,980,912 / 791,792 = 3.765 = 512 / 136 in shared/baselines.md, which confirms the
8 bytes of fp32 scales per token per head. The TurboQuant sizes follow vLLM's ``TurboQuantConfig``
(``key_packed_size + value_packed_size``, rounded up to even); TurboQuant also keeps the first 2 and
last 2 layers of a dense model in bf16 ("boundary skip"), which the capacity model counts.

kvarn formats also hold an fp16 sink/tail pool (kvarn.config.pool_slots / pool_bytes_per_layer) that
is counted against KV memory by :mod:`kvarn.plan.memory`. ``kvarn_<preset>+qsink`` is the same format
served with ``KVARN_SINK=quantized`` (block 0 quantized too: one pool slot per sequence, not two).

Kernel attributes (used by :mod:`kvarn.plan.roofline`): ``attn_eff`` is the fraction of HBM bandwidth the
decode-attention kernel achieves on this format's bytes (dequantization, occupancy and split-K included);
``prefill_eff`` is the prefill-attention speed relative to FlashAttention-3 on bf16, ``cached_prefill_eff`` the
extra factor for attention to positions cached before the chunk (kvarn: the dense route); ``split_kv`` says
whether the decode kernel splits a sequence across CTAs (without it, few sequences leave SMs idle). See docs/plan.md for
where each value comes from.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from kvarn.config import (PRESETS, SINK_SUFFIXES, SUPPORTED_HEAD_DIMS, KvarnConfig, kv_cache_dtype_names,
                          split_sink_suffix)

# ---- kernel efficiency priors (see docs/plan.md, "Constants") ---------------------------------
FA3_ATTN_EFF = 0.70          # FlashAttention-3 paged decode, bf16/fp8 (one value for both)
TRITON_INT_ATTN_EFF = 0.078  # vLLM TRITON_ATTN on int4/int8_per_token_head: fitted to the int4 burst-A row
TRITON_INT_PREFILL_EFF = 0.5  # TRITON_ATTN prefill vs FA3 (prior; barely matters in the baselines)
TURBOQUANT_ATTN_EFF = 0.15   # TurboQuant decode (Lloyd-Max dequant + rotation); TQB: 40-52% lower tok/s
TURBOQUANT_PREFILL_EFF = 0.5
# kvarn: measured on the H200 (docs/gpu.md). The final decode path (one launch: Gluon record programs, pool
# programs, in-kernel q rotation, split-K merge) takes 389.5 us per layer call at 768 x 1,152 with ragged tails
# (probe_decode_shapes.py --ragged, 2026-12-02 04:52, results/h200-check-2026-12-02b), against 418.8 us for the
# decode path of 2026-12-01 14:49 (0.67) and 450.1 us for the Triton kernel of 07:56, which read at 62% of the
# 4,256 GB/s copy rate counting bytes as this planner does (sink and a half-full tail read as fp16):
# attn_eff 0.67 x 418.8 / 389.5 = 0.72.
# Before: 0.67 (Gluon record pass, 2026-12-01 14:49), 0.62 (Triton kernel, record pass transposed, 2026-12-01
# 07:56), 0.58 (2-warp programs, 482.8 us,
# 2026-12-01 05:40), 0.51 (operand-order code bytes, loads ahead, L2 prefetch, 2026-11-30), 0.47 (loads ahead),
# 0.40 (v3 kernel), 0.27 (v2).
# The flush encodes all layers' tiles of a step in one launch at ~0.42 us per
# (block, KV head, layer) tile (bench_write.py, 2026-11-30 10:36: 851.6 us for 2,048 records with one-pass
# stds and 4 warps per tile; 0.8 before); the per-step host work of the
# metadata builder (pool plan in Python, routing, staging) and the slower small-batch kernel add ~0.9 ms per
# decode step, fitted once to burst B with decode kernel v2 (1,924 tok/s).
# Override with --kvarn-attn-eff / --kvarn-flush-us for other GPUs or kernels.
# A prefill chunk's attention to positions cached before it (prefix hits, the prompt's earlier chunks) runs on
# kvarn's dense route (dequantize the context once per layer, then FlashAttention in fp16): fitted to burst L,
# 16 x (32,768 + 64) in 16,384-token chunks on the H200 (2026-11-30 17:13, docs/gpu.md): 23,180.4 ms of
# prefill against bf16's 19,922.0 (1.164x); 0.63 makes the planner's kvarn / bf16 prefill-time ratio of one such
# prompt 1.164 (the flush included).
KVARN_CACHED_PREFILL_EFF = 0.63
KVARN_ATTN_EFF = 0.72
# Layouts the Gluon record pass does not serve (kvarn.kernels.decode_gluon.gluon_applies: it covers kvarn_k4v2_g128
# at head_dim 128 with 4 query heads per KV head) run the Triton kernel: its 0.62 of 2026-12-01 07:56 (measured at
# GQA 4, head_dim 128; other shapes not measured separately).
KVARN_TRITON_ATTN_EFF = 0.62
KVARN_FLUSH_S_PER_TILE = 0.42e-6
KVARN_STEP_OVERHEAD_S = 0.9e-3

TURBOQUANT_PRESETS = {  # name -> (key bits, value bits); 8 = fp8 keys
    "turboquant_k8v4": (8, 4),
    "turboquant_4bit_nc": (4, 4),
    "turboquant_k3v4_nc": (3, 4),
    "turboquant_3bit_nc": (3, 3),
}
TURBOQUANT_SKIP_EDGE_LAYERS = 2


@dataclass(frozen=True)
class KVFormat:
    """One ``--kv-cache-dtype`` choice. ``bytes_per_token_head`` is for the given head_dim."""

    name: str
    family: str  # "vllm" | "turboquant" | "kvarn"
    backend: str
    bytes_per_token_head: float
    block_size: int = 16
    attn_eff: float = FA3_ATTN_EFF
    prefill_eff: float = 1.0
    cached_prefill_eff: float = 1.0  # extra factor on attention to positions cached before a prefill chunk
    edge_layers_bf16: int = 0  # layers at each end kept in bf16 (TurboQuant boundary skip)
    split_kv: bool = True  # decode kernel splits long contexts across CTAs (flash-decoding)
    flush_s_per_tile: float = 0.0  # kvarn: normalize + RTN + pack of one (block, KV head, layer) tile
    step_overhead_s: float = 0.0  # extra host/launch time per decode step beyond vLLM's own (kvarn: builder)
    kvarn: KvarnConfig | None = None
    supported: bool = True
    why_unsupported: str = ""

    def layer_bytes_per_token(self, num_layers: int, heads: int, head_dim: int) -> float:
        """Bytes one token occupies across all layers for ``heads`` KV heads."""
        edge = min(2 * self.edge_layers_bf16, num_layers)
        bf16 = 4 * head_dim
        return heads * ((num_layers - edge) * self.bytes_per_token_head + edge * bf16)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "family": self.family, "backend": self.backend,
            "bytes_per_token_head": self.bytes_per_token_head, "block_size": self.block_size,
            "attn_eff": self.attn_eff, "prefill_eff": self.prefill_eff, "cached_prefill_eff": self.cached_prefill_eff,
            "edge_layers_bf16": self.edge_layers_bf16, "split_kv": self.split_kv,
            "flush_us_per_tile": self.flush_s_per_tile * 1e6, "step_overhead_ms": self.step_overhead_s * 1e3,
            "supported": self.supported,
            "why_unsupported": self.why_unsupported,
        }


def turboquant_bytes(key_bits: int, value_bits: int, head_dim: int) -> int:
    """vLLM TurboQuantConfig.slot_size_aligned: fp8 keys (D bytes) or MSE codes + fp16 norm, plus
    uniform values + fp16 scale and zero, rounded up to an even byte count."""
    k = head_dim if key_bits == 8 else math.ceil(head_dim * key_bits / 8) + 2
    v = math.ceil(head_dim * value_bits / 8) + 4
    s = k + v
    return s + (s % 2)


VLLM_FORMATS = ("bf16", "fp16", "fp8", "int8_per_token_head", "int4_per_token_head")
ALIASES = {"auto": "bf16", "bfloat16": "bf16", "float16": "fp16", "half": "fp16",
           "fp8_e4m3": "fp8", "fp8_e5m2": "fp8"}
DEFAULT_COMPARE = ("bf16", "fp8", "int4_per_token_head", *TURBOQUANT_PRESETS, *kv_cache_dtype_names())


def all_format_names() -> list[str]:
    kvarn = kv_cache_dtype_names()
    return [*VLLM_FORMATS, *TURBOQUANT_PRESETS, *kvarn, *(n + sfx for sfx in SINK_SUFFIXES.values() for n in kvarn)]


def get_format(name: str, head_dim: int, kvarn_attn_eff: float | None = None,
               kvarn_flush_us: float | None = None, q_heads_per_kv: int | None = None) -> KVFormat:
    """Build the :class:`KVFormat` for ``name`` at ``head_dim``; ValueError lists the valid names.
    ``kvarn_attn_eff`` / ``kvarn_flush_us`` replace the kvarn kernel priors (measured values).
    ``q_heads_per_kv`` (the model's GQA ratio; None = 4) picks the kvarn decode prior: KVARN_ATTN_EFF where the
    Gluon record pass serves the layout, KVARN_TRITON_ATTN_EFF elsewhere."""
    fmt = _get_format(name, head_dim)
    if fmt.family == "kvarn" and fmt.supported and not gluon_layout(fmt.kvarn, q_heads_per_kv or 4):
        fmt = dataclasses.replace(fmt, attn_eff=KVARN_TRITON_ATTN_EFF)
    if fmt.family == "kvarn" and (kvarn_attn_eff is not None or kvarn_flush_us is not None):
        if kvarn_attn_eff is not None and not 0.0 < kvarn_attn_eff <= 1.0:
            raise ValueError(f"--kvarn-attn-eff must be in (0, 1], got {kvarn_attn_eff}")
        if kvarn_flush_us is not None and kvarn_flush_us < 0:
            raise ValueError(f"--kvarn-flush-us must be >= 0, got {kvarn_flush_us}")
        fmt = dataclasses.replace(
            fmt, attn_eff=fmt.attn_eff if kvarn_attn_eff is None else kvarn_attn_eff,
            flush_s_per_tile=fmt.flush_s_per_tile if kvarn_flush_us is None else kvarn_flush_us * 1e-6)
    return fmt


def gluon_layout(cfg: KvarnConfig, q_heads_per_kv: int) -> bool:
    """Whether decode on a CUDA GPU with vLLM 0.26's Triton 3.6 reads this layout's records with the Gluon kernel
    (the rule of kvarn.kernels.decode_gluon.gluon_applies, restated here so the planner needs no Triton)."""
    return cfg.kv_cache_dtype == "kvarn_k4v2_g128" and cfg.head_dim == 128 and q_heads_per_kv == 4


def _get_format(name: str, head_dim: int) -> KVFormat:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    d = head_dim
    if key in ("bf16", "fp16"):
        return KVFormat(key, "vllm", "FLASH_ATTN", 4 * d)
    if key == "fp8":
        return KVFormat(key, "vllm", "FLASH_ATTN", 2 * d)
    if key in ("int8_per_token_head", "int4_per_token_head"):
        code = 2 * d if key.startswith("int8") else d
        return KVFormat(key, "vllm", "TRITON_ATTN", code + 8, attn_eff=TRITON_INT_ATTN_EFF,
                        prefill_eff=TRITON_INT_PREFILL_EFF, split_kv=False)
    if key in TURBOQUANT_PRESETS:
        kb, vb = TURBOQUANT_PRESETS[key]
        return KVFormat(key, "turboquant", "TURBOQUANT", turboquant_bytes(kb, vb, d),
                        attn_eff=TURBOQUANT_ATTN_EFF, prefill_eff=TURBOQUANT_PREFILL_EFF,
                        edge_layers_bf16=TURBOQUANT_SKIP_EDGE_LAYERS)
    key, mode = split_sink_suffix(key)
    sink = mode or "fp16"
    if key.startswith("kvarn_") or key in PRESETS:
        named = KvarnConfig.from_name(key)  # validates the name
        label = named.kv_cache_dtype + SINK_SUFFIXES.get(sink, "")
        if d not in SUPPORTED_HEAD_DIMS:
            return KVFormat(label, "kvarn", "KVARN", float("nan"), block_size=named.group,
                            supported=False,
                            why_unsupported=f"head_dim {d} not in kvarn's supported {SUPPORTED_HEAD_DIMS}")
        cfg = KvarnConfig.from_name(key, head_dim=d, sink=sink)
        return KVFormat(label, "kvarn", "KVARN", cfg.bytes_per_token, block_size=cfg.group,
                        attn_eff=KVARN_ATTN_EFF, prefill_eff=1.0, cached_prefill_eff=KVARN_CACHED_PREFILL_EFF,
                        kvarn=cfg, flush_s_per_tile=KVARN_FLUSH_S_PER_TILE, step_overhead_s=KVARN_STEP_OVERHEAD_S)
    raise ValueError(f"unknown KV format {name!r}; valid: {', '.join(all_format_names())}")
