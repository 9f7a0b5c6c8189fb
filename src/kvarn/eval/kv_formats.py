"""One interface over every KV-cache format the evaluation compares.

A :class:`KVFormat` says what attention reads back for a sequence's keys and values, and *when*:

* ``quantize(k, v)`` -- k, v ``[T, H, D]`` (post-RoPE keys, one sequence, heads folded in freely) of
  ``T`` a multiple of ``tile`` tokens, all of them *complete* quantization units; returns the
  dequantized ``(k_hat, v_hat)`` fp32, same shape. Units are independent, so a sequence can be
  quantized incrementally, one completed unit at a time.
* ``tile`` -- tokens per quantization unit (kvarn and KIVI: G = 128 or 64; per-token formats: 1).
* ``sink`` -- the first unit is never quantized (kvarn, KIVI: block 0 stays fp16), unless
  ``sink_quantize_fn`` is given: then the complete first unit is read back through it.
* ``fp16_tail`` -- a unit still filling is read back as fp16 (kvarn/KIVI keep the tail in an fp16
  pool); when False, each token is quantized the moment it is written and read back quantized, its
  own step included (fp8, int4 per token-head).

Names (``format_names(head_dim)``)::

    bf16                                  no-op: the unquantized cache (the reference)
    kvarn_<preset>@reference|improved     kvarn.reference.roundtrip, every preset x numerics
    kvarn_<preset>@<numerics>+qsink       the same with block 0 quantized too (``KVARN_SINK=quantized``);
                                          resolvable by name, not part of ``all``
    kvarn_<preset>@<numerics>+tsink       block 0 quantized except its first token (``KVARN_SINK=token``)
    kvarn_<preset>@<numerics>+q4sink      a design probe, not served by the backend: block 0 encoded with
                                          4-bit values (the preset's keys, k4v4 record), later tiles as named
    fp8_e4m3, int4_per_token_head, kivi2  kvarn.reference.baselines.fake_quant(name, k, v)

``bits_per_element`` counts K and V together, scales included, at the given head_dim.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from kvarn.config import NUMERICS, PRESETS, QSINK_SUFFIX as QSINK, TSINK_SUFFIX as TSINK, KvarnConfig

BASELINES = ("fp8_e4m3", "int4_per_token_head", "kivi2")
# KIVI-2 as kvarn.reference.baselines implements it: K per channel over 128-token groups, fp16 sink + tail.
KIVI_GROUP = 128


@dataclass(frozen=True)
class KVFormat:
    """A KV-cache format as the attention sees it (see module doc)."""

    name: str
    bits_per_element: float
    tile: int
    sink: bool
    fp16_tail: bool
    quantize_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )
    description: str = ""
    sink_quantize_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = (
        dataclasses.field(default=None, repr=False, compare=False))

    @property
    def is_exact(self) -> bool:
        """True for the unquantized reference (no quantization anywhere)."""
        return self.quantize_fn is None

    def quantize(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantized (k_hat, v_hat) fp32 [T, H, D] of complete units; T % tile == 0."""
        if k.shape[0] % self.tile:
            raise ValueError(f"{self.name}: {k.shape[0]} tokens is not a multiple of the unit {self.tile}")
        if self.quantize_fn is None or k.shape[0] == 0:
            return k.float(), v.float()
        return self.quantize_fn(k.float(), v.float())

    def cache_view(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the cache holds for a whole sequence k, v [T, H, D] after all T tokens were written.

        The sink unit (if any) and the ragged filling unit are fp16 (when ``fp16_tail``), complete
        units are quantized. This is the view a query *after* the sequence sees; it is used by tests
        and by the one-shot helpers (the attention simulator applies the per-query rule itself).
        """
        if self.is_exact:
            return k.float(), v.float()
        t = k.shape[0]
        n_full = t // self.tile
        k_out, v_out = k.half().float(), v.half().float()
        first = 1 if self.sink else 0
        if self.sink and self.sink_quantize_fn is not None and n_full:
            g = self.tile
            k_out[:g], v_out[:g] = self.sink_quantize_fn(k[:g].float(), v[:g].float())
        if n_full > first:
            sl = slice(first * self.tile, n_full * self.tile)
            k_out[sl], v_out[sl] = self.quantize(k[sl], v[sl])
        if not self.fp16_tail and n_full * self.tile < t:
            raise ValueError(f"{self.name}: per-token format with tile {self.tile} cannot leave a ragged tail")
        return k_out, v_out


Q4SINK = "+q4sink"  # name suffix (design probe): block 0 encoded with 4-bit values
SINK_NAME_SUFFIXES = (QSINK, TSINK, Q4SINK)  # what may follow a kvarn name's @numerics
_SUFFIX_HINT = f"(a kvarn name may end in {QSINK}: sink quantized, {TSINK}: all but its first token, or {Q4SINK})"


def _kvarn_format(preset: str, numerics: str, head_dim: int, sink: str = "") -> KVFormat:
    """sink: "" (fp16 sink), QSINK (quantized like every tile), TSINK (quantized, its first token fp16) or Q4SINK
    (quantized with 4-bit values)."""
    cfg = KvarnConfig.from_name(preset, head_dim=head_dim, numerics=numerics)
    from kvarn.reference import roundtrip

    def codec(c: KvarnConfig):
        return lambda k, v: roundtrip(k, v, c, keep_sink=False)

    sink_cfg = dataclasses.replace(cfg, value_bits=4) if sink == Q4SINK else None
    sink_fn = codec(sink_cfg) if sink_cfg else None
    if sink == TSINK:
        whole = codec(cfg)

        def sink_fn(k, v):  # position 0 read back in fp16, as its sink row holds it
            kh, vh = whole(k, v)
            kh[:1], vh[:1] = k[:1].half().float(), v[:1].half().float()
            return kh, vh
    return KVFormat(
        name=f"{cfg.kv_cache_dtype}@{numerics}{sink}",
        bits_per_element=cfg.bits_per_element,
        tile=cfg.group,
        sink=sink != QSINK,
        fp16_tail=True,
        quantize_fn=codec(cfg),
        description=cfg.describe() + {"": "", QSINK: "; sink (block 0) quantized",
                                      TSINK: "; sink (block 0) quantized except its first token",
                                      Q4SINK: "; sink (block 0) quantized with 4-bit values (design probe)"}[sink],
        sink_quantize_fn=sink_fn,
    )


def baseline_bits(name: str, head_dim: int) -> float:
    """Bits per element (K and V, scales included) of a baseline at its byte budget
    (:func:`kvarn.reference.baselines.baseline_bits_per_element`; KIVI at group 128)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")
    from kvarn.reference.baselines import baseline_bits_per_element

    return baseline_bits_per_element(name, head_dim, group=KIVI_GROUP)


def _baseline_format(name: str, head_dim: int) -> KVFormat:
    from kvarn.reference.baselines import fake_quant

    def fn(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kh, vh = fake_quant(name, k, v, group=KIVI_GROUP, keep_sink=False)
        return kh.float(), vh.float()

    per_token = name != "kivi2"
    desc = {
        "fp8_e4m3": "per-token write, one per-tensor scale = amax of the K (V) block written at once",
        "int4_per_token_head": "vLLM int4_per_token_head (RHT + 4-bit RTN, fp32 scale per token-head)",
        "kivi2": f"2-bit K per channel over {KIVI_GROUP}-token groups, V per token; fp16 sink and tail like kvarn",
    }[name]
    return KVFormat(
        name=name,
        bits_per_element=baseline_bits(name, head_dim),
        tile=1 if per_token else KIVI_GROUP,
        sink=not per_token,
        fp16_tail=not per_token,
        quantize_fn=fn,
        description=desc,
    )


def format_names(head_dim: int = 128, include_baselines: bool = True) -> list[str]:
    """Every format name, reference first: bf16, kvarn presets x numerics, then the baselines."""
    names = ["bf16"]
    for preset in PRESETS:
        for num in NUMERICS:
            names.append(f"kvarn_{preset}@{num}")
    if include_baselines:
        names.extend(BASELINES)
    return names


def resolve_names(spec: str | list[str], head_dim: int) -> list[str]:
    """Expand a comma list / list of names and aliases into canonical names (bf16 always first).

    Aliases: ``all``, ``kvarn`` (all presets x numerics), ``baselines``, ``k4v2_g128`` (both numerics),
    ``kvarn_k4v2_g128@improved`` (one). Unknown names raise with the valid list.
    """
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    all_names = format_names(head_dim)
    out: list[str] = ["bf16"]
    for item in items:
        low = item.lower()
        if low == "all":
            cand = all_names
        elif low == "kvarn":
            cand = [n for n in all_names if n.startswith("kvarn_")]
        elif low == "baselines":
            cand = list(BASELINES)
        else:
            base = low if low.startswith("kvarn_") or low in ("bf16",) + BASELINES else "kvarn_" + low
            suffix = next((x for x in SINK_NAME_SUFFIXES if base.endswith(x) and "@" in base), "")
            plain = base.removesuffix(suffix)
            cand = [n + suffix for n in all_names if n == plain or (not suffix and n.split("@")[0] == plain)]
        if not cand:
            raise ValueError(f"unknown KV format {item!r}; valid: all, kvarn, baselines, {', '.join(all_names)} "
                             + _SUFFIX_HINT)
        out.extend(c for c in cand if c not in out)
    return out


def make_format(name: str, head_dim: int) -> KVFormat:
    """Build the :class:`KVFormat` called ``name`` for a model of ``head_dim`` (see :func:`format_names`)."""
    if name == "bf16":
        return KVFormat(name="bf16", bits_per_element=16.0, tile=1, sink=False, fp16_tail=False,
                        description="unquantized cache (reference)")
    if name in BASELINES:
        return _baseline_format(name, head_dim)
    if name.startswith("kvarn_") and "@" in name:
        preset, num = name[len("kvarn_"):].split("@", 1)
        sink = next((x for x in SINK_NAME_SUFFIXES if num.endswith(x)), "")
        num = num.removesuffix(sink)
        if preset in PRESETS and num in NUMERICS:
            return _kvarn_format(preset, num, head_dim, sink=sink)
    raise ValueError(f"unknown KV format {name!r}; valid: {', '.join(format_names(head_dim))} "
                     + _SUFFIX_HINT)
