"""Presets, numerics options and the byte layout of a kvarn tile record.

One frozen object, :class:`KvarnConfig`, names everything the codec, the kernels and the vLLM
backend need: bit widths, tile length G (= vLLM block size), head_dim D, the numerics option,
and every derived byte size and offset of the per-(block, KV head) record.

Record layout (method.md §1.5), all scales fp16, LSB-first packed codes::

    K codes  [G*kb/8, D] | K row_scale [D] | K row_zero [D] | K col_scale [G]
    V codes  [D*vb/8, G] | V col_scale [D] | V row_scale [G] | V row_zero [G] | pad

Code bytes are stored with the reduction axis of the decode kernel's products contiguous (channels for
q.K, tokens for p.V), so its tensor-core operands load as whole words (ldmatrix) rather than byte by
byte: K byte (j, d) holds channel d of tokens p*(G/PK) + j in bits p*kb (PK = 8/kb token planes);
V byte (e, n) holds token n of channels PV*e + p in bits p*vb (PV = 8/vb). This transposes method.md's
byte order (sizes and offsets unchanged; 2026-11-30).

K tiles are [D, G] (rows = channels, columns = tokens): per-channel step/zero, per-token scale.
V tiles are [G, D] (rows = tokens, columns = channels): per-token step/zero, per-channel scale.
The record is padded to ``G * bytes_per_token`` bytes so vLLM can see it as G cells of
``bytes_per_token`` bytes (one cell per token per KV head).
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
from dataclasses import dataclass

SUPPORTED_HEAD_DIMS = (64, 128, 256)
SUPPORTED_BITS = (2, 4)
SUPPORTED_GROUPS = (64, 128)
DTYPE_PREFIX = "kvarn_"


@dataclass(frozen=True)
class Numerics:
    """How a tile is balanced and rounded.

    iters: alternating column/row std passes (method.md §1.3, default 8).
    log_clamp: (lo, hi) bounds of the accumulated log-scales; the reference uses (-0.3, 10).
    std_clamp: bounds of each pass's std before the log; the reference uses (1e-3, 1e3).
    prescale_rms: divide each tile by its global RMS before balancing (fixes flaw 1: with the
        -0.3 clamp a tile of RMS << 0.74 is otherwise only rescaled uniformly).
    clip_ratios: candidate shrink factors of each row's [min, max] range for round-to-nearest; the
        one with the lowest row MSE wins (fixes flaw 2). ``(1.0,)`` is the reference: full range.
    clip_max_bits: the clip search runs only for tensors quantized to at most this many bits
        (2-bit values and keys); 4-bit rows keep their full range, since clipping a rare large
        4-bit key cost attention-probability cosine in `kvarn fidelity`.
    """

    name: str
    iters: int = 8
    log_clamp: tuple[float, float] = (-0.3, 10.0)
    std_clamp: tuple[float, float] = (1e-3, 1e3)
    prescale_rms: bool = False
    clip_ratios: tuple[float, ...] = (1.0,)
    clip_max_bits: int = 2

    def __post_init__(self) -> None:
        if self.iters < 0:
            raise ValueError(f"iters must be >= 0, got {self.iters}")
        if not self.clip_ratios or any(not (0.0 < r <= 1.0) for r in self.clip_ratios):
            raise ValueError(f"clip_ratios must be in (0, 1], got {self.clip_ratios}")
        if self.clip_ratios[0] != 1.0:
            raise ValueError("clip_ratios must start with 1.0 (the full range), so ties keep it")

    def clip_ratios_for(self, bits: int) -> tuple[float, ...]:
        """The clip candidates used for a tensor of ``bits`` bits."""
        return self.clip_ratios if bits <= self.clip_max_bits else (1.0,)


NUMERICS = {
    # The upstream numerics, copied exactly (method.md §5 item 4).
    "reference": Numerics(name="reference"),
    # Same bytes, fixes flaws 1 and 2: RMS prescale, then per-row MSE-optimal range clipping at 2 bits.
    # Better NMSE, worse next-token KL on real models (see DEFAULT_NUMERICS); selectable.
    "improved": Numerics(
        name="improved",
        prescale_rms=True,
        clip_ratios=(1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5),
    ),
}
# The default is the numerics with the lower end-to-end drift (`kvarn eval`, teacher-forced next-token KL):
# `improved` lowers NMSE and attention-output error (`kvarn fidelity`) but raised KL for k4v2_g128 on both
# real models (SmolLM2 2K: 0.0103 vs 0.0081; Qwen2.5-Coder-1.5B 4K: 0.0127 vs 0.0086), 2026-11-29.
DEFAULT_NUMERICS = "reference"

# name -> (key bits, value bits, group)
PRESETS: dict[str, tuple[int, int, int]] = {
    "k4v2_g128": (4, 2, 128),
    "k4v2_g64": (4, 2, 64),
    "k4v4_g128": (4, 4, 128),
    "k4v4_g64": (4, 4, 64),
    "k2v2_g128": (2, 2, 128),
}
DEFAULT_PRESET = "k4v2_g128"

# What happens to a request's first block (the "sink", method.md §1.6) once it is complete:
#   fp16      -- it stays in the fp16 pool while the request lives (the upstream method; the default);
#   quantized -- it is flushed into a record like every other complete tile (a deviation: halves the
#                pool's per-sequence slots and the sink's bytes read per decode step; flaw 4);
#   token     -- flushed like ``quantized``, but its first token (position 0, the attention sink) stays fp16:
#                one rotated K and V row per request in the pool's sink-row slots (flaw 4; the drift of a
#                quantized sink is almost all token 0's 2-bit value row, see docs/eval.md).
SINK_MODES = ("fp16", "quantized", "token")
DEFAULT_SINK = "fp16"
# Suffix of a kvarn name in the tools (`kvarn eval` formats, `kvarn plan` formats, `kvarn bench` arms) for the
# quantized sink; the vLLM backend itself takes it from KVARN_SINK=quantized, the --kv-cache-dtype is unchanged.
QSINK_SUFFIX = "+qsink"
TSINK_SUFFIX = "+tsink"  # the same for KVARN_SINK=token
SINK_SUFFIXES = {"token": TSINK_SUFFIX, "quantized": QSINK_SUFFIX}  # token first: the advisor breaks ties in list order


def split_sink_suffix(name: str) -> tuple[str, str | None]:
    """A tool's kvarn name -> (name without its sink suffix, the KVARN_SINK mode it names or None):
    ``kvarn_k4v2_g128+tsink`` -> (``kvarn_k4v2_g128``, "token"); ``kvarn_k4v2_g128`` -> (same, None)."""
    mode = next((m for m, sfx in SINK_SUFFIXES.items() if name.endswith(sfx)), None)
    return (name.removesuffix(SINK_SUFFIXES[mode]) if mode else name), mode


SINK_NOTES = {"fp16": "", "quantized": ", sink quantized", "token": ", sink quantized but its first token fp16"}

# Query tokens of one request per decode-kernel program (KVARN_MQ_GROUP, the kernel's tokens_per_program):
# powers of two up to the 16 rows of one MMA tile.
TOKENS_PER_PROGRAM_CHOICES = (1, 2, 4, 8, 16)


def _as_int(value) -> int | None:
    """An integer (int, numpy integer), or a string that is exactly a non-negative integer's decimal form ("04",
    " 4", "+4" are not); None otherwise."""
    if isinstance(value, str):
        return int(value) if value.isdigit() and str(int(value)) == value else None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_mq_group(value) -> int:
    """``KVARN_MQ_GROUP`` (an environment string or an int) -> continuation tokens per decode-kernel program;
    ValueError naming the valid values. The one rule for the front end's check and the workers' read."""
    n = _as_int(value)
    if n not in TOKENS_PER_PROGRAM_CHOICES:
        raise ValueError(f"KVARN_MQ_GROUP must be one of {', '.join(map(str, TOKENS_PER_PROGRAM_CHOICES))} "
                         f"(continuation tokens per decode-kernel program), got {value!r}")
    return n


def check_dense_min(value) -> int:
    """``KVARN_DENSE_MIN`` (an environment string or an int) -> the continuation-chunk length from which a chunk
    is attended densely (0 = never); ValueError otherwise. The one rule for the front end and the workers."""
    n = _as_int(value)
    if n is None or (n != 0 and n < 2):
        raise ValueError(f"KVARN_DENSE_MIN must be 0 (never) or an integer >= 2 (continuation chunks of at least "
                         f"that many tokens are attended densely), got {value!r}")
    return n


# Kernel switches for A/B runs (docs/gpu.md): variable -> accepted values, the default first
KERNEL_ENV_CHOICES = {
    "KVARN_DECODE_ASM": ("1", "0"),  # dequantize by inline PTX (0: integer ops)
    "KVARN_DECODE_PREFETCH": ("1", "0", "2", "3", "4"),  # records requested into L2 this many tiles ahead
    "KVARN_DECODE_AHEAD": ("2", "0", "1"),  # record-loop loads a tile ahead (1 ids, 2 ids + K scales)
    "KVARN_DECODE_POOL_BN": ("64", "0", "16", "32", "128"),  # rows per pool-tile chunk (0: whole tiles)
    "KVARN_DECODE_TRIM": ("1", "0"),  # pool tiles at the ends of a range skip the record pass
    "KVARN_DECODE_ROTF": ("1", "0"),  # rotations as two 16-wide products (0: one [D, D] operand)
    "KVARN_DECODE_WARPS": ("0", "2", "4"),  # warps per decode program (0: by launch size, 2 or 4)
    "KVARN_DECODE_SWAP": ("auto", "1", "0"),  # record pass transposed (auto: with 2-warp programs)
    "KVARN_DECODE_GLUON": ("1", "0"),  # record pass by the Gluon kernel where it applies (0: the Triton kernel)
    "KVARN_FLUSH_WARPS": ("0", "1", "2", "4", "8", "16"),  # warps per flush program (0: by launch and tile size)
}


def kernel_env(var: str, value: str | None = None) -> str:
    """The value of kernel switch ``var`` (``value``, else the environment's; the default when unset or empty);
    ValueError naming the valid values otherwise. The one rule for the front end's check and the kernels' read."""
    valid = KERNEL_ENV_CHOICES[var]
    val = (os.environ.get(var) if value is None else value) or valid[0]
    if val not in valid:
        raise ValueError(f"{var} must be one of {', '.join(valid)} (default first), got {val!r}")
    return val


def kv_cache_dtype_names() -> list[str]:
    """Every ``--kv-cache-dtype`` string kvarn accepts, e.g. ``kvarn_k4v2_g128``."""
    return [DTYPE_PREFIX + p for p in PRESETS]


def _packed_bytes(rows: int, cols: int, bits: int) -> int:
    return rows * cols * bits // 8


@dataclass(frozen=True)
class KvarnConfig:
    """A kvarn cache format for one head_dim. Build with :meth:`from_name` or directly."""

    key_bits: int = 4
    value_bits: int = 2
    group: int = 128
    head_dim: int = 128
    numerics: Numerics = NUMERICS[DEFAULT_NUMERICS]
    sink: str = DEFAULT_SINK

    def __post_init__(self) -> None:
        if self.sink not in SINK_MODES:
            raise ValueError(f"sink must be one of {SINK_MODES}, got {self.sink!r}")
        if self.key_bits not in SUPPORTED_BITS or self.value_bits not in SUPPORTED_BITS:
            raise ValueError(
                f"bits must be one of {SUPPORTED_BITS}, got k{self.key_bits}v{self.value_bits}"
            )
        if self.group not in SUPPORTED_GROUPS:
            raise ValueError(f"group (tile length) must be one of {SUPPORTED_GROUPS}, got {self.group}")
        if self.head_dim not in SUPPORTED_HEAD_DIMS:
            raise ValueError(
                f"head_dim {self.head_dim} is not supported by kvarn; supported: {SUPPORTED_HEAD_DIMS}"
            )

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, head_dim: int = 128, numerics: str | Numerics | None = None,
                  sink: str | None = None) -> "KvarnConfig":
        """Parse ``kvarn_k4v2_g128`` or ``k4v2_g128`` (optionally ``...@reference`` for numerics).
        sink: one of SINK_MODES (None = DEFAULT_SINK)."""
        raw = name.strip().lower()
        if "@" in raw:
            raw, num_name = raw.split("@", 1)
            if numerics is None:
                numerics = num_name
        preset = raw[len(DTYPE_PREFIX):] if raw.startswith(DTYPE_PREFIX) else raw
        if preset not in PRESETS:
            raise ValueError(
                f"unknown kvarn preset {name!r}; valid names: {', '.join(kv_cache_dtype_names())}"
            )
        kb, vb, g = PRESETS[preset]
        return cls(key_bits=kb, value_bits=vb, group=g, head_dim=head_dim, numerics=get_numerics(numerics),
                   sink=sink or DEFAULT_SINK)

    def with_head_dim(self, head_dim: int) -> "KvarnConfig":
        return dataclasses.replace(self, head_dim=head_dim)

    def with_numerics(self, numerics: str | Numerics) -> "KvarnConfig":
        return dataclasses.replace(self, numerics=get_numerics(numerics))

    @property
    def first_quantized_tile(self) -> int:
        """Index of a request's first tile that is ever quantized: 1 with an fp16 sink, else 0."""
        return 1 if self.sink == "fp16" else 0

    @property
    def token_sink(self) -> bool:
        """True when position 0 stays fp16 in a sink row while its tile is a record (sink "token")."""
        return self.sink == "token"

    @property
    def pool_slots_per_seq(self) -> int:
        """fp16 pool slots a running sequence holds: sink + tail, or the tail alone."""
        return 1 + self.first_quantized_tile

    @property
    def preset(self) -> str:
        return f"k{self.key_bits}v{self.value_bits}_g{self.group}"

    @property
    def kv_cache_dtype(self) -> str:
        return DTYPE_PREFIX + self.preset

    # ---- record layout (bytes) ----------------------------------------------------------
    @property
    def k_codes_bytes(self) -> int:
        return _packed_bytes(self.head_dim, self.group, self.key_bits)

    @property
    def v_codes_bytes(self) -> int:
        return _packed_bytes(self.group, self.head_dim, self.value_bits)

    @property
    def k_scale_bytes(self) -> int:
        return 2 * (2 * self.head_dim + self.group)

    @property
    def v_scale_bytes(self) -> int:
        return 2 * (self.head_dim + 2 * self.group)

    @property
    def raw_record_bytes(self) -> int:
        return self.k_codes_bytes + self.k_scale_bytes + self.v_codes_bytes + self.v_scale_bytes

    @property
    def bytes_per_token(self) -> int:
        """Bytes per token per KV head (K and V, scales included): vLLM's cell size."""
        return math.ceil(self.raw_record_bytes / self.group)

    @property
    def record_bytes(self) -> int:
        """Bytes of one (block, KV head) tile record, padded to G cells."""
        return self.group * self.bytes_per_token

    @property
    def bits_per_element(self) -> float:
        return 8.0 * self.bytes_per_token / (2 * self.head_dim)

    def ratio_vs(self, elem_bytes: float) -> float:
        """Capacity ratio against an uncompressed cache of ``elem_bytes`` per element (2 = bf16)."""
        return 2 * self.head_dim * elem_bytes / self.bytes_per_token

    @property
    def offsets(self) -> dict[str, tuple[int, int]]:
        """(start, length in bytes) of each region of the record, in record order."""
        d, g = self.head_dim, self.group
        regions = [
            ("k_codes", self.k_codes_bytes),
            ("k_row_scale", 2 * d),
            ("k_row_zero", 2 * d),
            ("k_col_scale", 2 * g),
            ("v_codes", self.v_codes_bytes),
            ("v_col_scale", 2 * d),
            ("v_row_scale", 2 * g),
            ("v_row_zero", 2 * g),
        ]
        out, pos = {}, 0
        for name, n in regions:
            out[name] = (pos, n)
            pos += n
        return out

    def describe(self) -> str:
        return (
            f"{self.kv_cache_dtype} (numerics={self.numerics.name}, head_dim={self.head_dim}"
            f"{SINK_NOTES[self.sink]}): "
            f"{self.bytes_per_token} B/token/head, {self.bits_per_element:.3f} bits/elem, "
            f"{self.ratio_vs(2):.2f}x smaller than bf16"
        )


def get_numerics(numerics: str | Numerics | None) -> Numerics:
    if numerics is None:
        return NUMERICS[DEFAULT_NUMERICS]
    if isinstance(numerics, Numerics):
        return numerics
    if numerics not in NUMERICS:
        raise ValueError(f"unknown numerics {numerics!r}; valid: {', '.join(NUMERICS)}")
    return NUMERICS[numerics]


def parse_kv_cache_dtype(value: str) -> str | None:
    """Return the preset for a ``kvarn_*`` dtype string, None for a non-kvarn string.

    Raises ValueError (listing valid names) for a ``kvarn_`` string that names no preset.
    """
    if not isinstance(value, str) or not value.lower().startswith(DTYPE_PREFIX):
        return None
    return KvarnConfig.from_name(value).preset


def pool_slots(max_num_seqs: int, max_num_batched_tokens: int, group: int, per_seq: int = 2) -> int:
    """Slots of the fp16 sink/tail pool (method.md §1.6): ``per_seq`` per sequence (2 = sink + tail;
    1 = the tail alone, with the sink quantized: ``KvarnConfig.pool_slots_per_seq``), one per tile a
    step can fill, plus 8 spare. Each slot holds G rows of rotated K and V for every KV head of one
    layer: ``G * num_kv_heads * head_dim * 2 (K,V) * 2 bytes`` per layer."""
    if per_seq not in (1, 2):
        raise ValueError(f"per_seq (pool slots per sequence) must be 1 or 2, got {per_seq}")
    return per_seq * max_num_seqs + math.ceil(max_num_batched_tokens / group) + 8


def sink_row_slots(max_num_seqs: int, group: int) -> int:
    """Extra pool slots that hold the fp16 sink rows of ``KVARN_SINK=token`` (one K and V row per request's
    first block, G rows per slot): room for 2 x max_num_seqs rows (live requests plus retired ones that a
    prefix-cache hit may reuse)."""
    return math.ceil(2 * max_num_seqs / group)


def pool_bytes_per_layer(slots: int, group: int, num_kv_heads: int, head_dim: int) -> int:
    """fp16 pool bytes of one attention layer (K and V)."""
    return slots * group * num_kv_heads * head_dim * 2 * 2


def total_pool_slots(cfg: KvarnConfig, max_num_seqs: int, max_num_batched_tokens: int) -> int:
    """Slots each layer's pool tensors hold for ``cfg`` at these scheduler limits (sink-row slots included)."""
    rows = sink_row_slots(max_num_seqs, cfg.group) if cfg.token_sink else 0
    return pool_slots(max_num_seqs, max_num_batched_tokens, cfg.group, cfg.pool_slots_per_seq) + rows


def pool_counted_ratio(cfg: KvarnConfig, record_bytes: int, pool_bytes: int) -> float:
    """Capacity vs bf16 with the fp16 pool counted: records and pool share the memory bf16 pages would fill, so
    ratio_vs(2) * record_bytes / (record_bytes + pool_bytes)."""
    return cfg.ratio_vs(2) * record_bytes / (record_bytes + pool_bytes)


def max_num_seqs_for_ratio(cfg: KvarnConfig, target: float, total_bytes: int, num_layers: int, num_kv_heads: int,
                           max_num_batched_tokens: int, upto: int) -> int:
    """Largest max_num_seqs <= ``upto`` (a multiple of 8, or ``upto`` itself) whose pool leaves a capacity of at
    least ``target`` x bf16 with the pool counted, 0 if none does.

    ``total_bytes``: the memory shared by records and pool (records' bytes + pool bytes now). With pool bytes P(s)
    at max_num_seqs s, capacity vs bf16 = :func:`pool_counted_ratio` of (total - P(s), P(s))."""
    def ratio_at(seqs: int) -> float:
        slots = total_pool_slots(cfg, seqs, max_num_batched_tokens)
        pool = pool_bytes_per_layer(slots, cfg.group, num_kv_heads, cfg.head_dim) * num_layers
        return pool_counted_ratio(cfg, total_bytes - pool, pool)
    if upto >= 1 and ratio_at(upto) >= target:
        return upto
    for seqs in range((upto - 1) // 8 * 8, 0, -8):
        if ratio_at(seqs) >= target:
            return seqs
    return 0
