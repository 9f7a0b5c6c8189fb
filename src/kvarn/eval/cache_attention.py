"""Attention that reads K/V the way a quantized KV cache returns them, for a transformers model.

Rule (mirrors the real kvarn cache; method.md 1.6-1.8). Query at position t, format unit size G:

* keys/values of positions in units ``< t // G`` come from the *cache view*: unit 0 fp16 when the
  format keeps a sink (or through its ``sink_quantize_fn``), every later complete unit quantized then
  dequantized;
* keys/values of the unit ``t // G`` itself (the tile still filling, positions ``t//G*G .. t``) are
  read as fp16 (cast through fp16) -- the tail pool;
* per-token formats (``fp16_tail=False``, fp8 / int4) read every position quantized, t included.

So a single teacher-forced forward over T tokens is computed exactly as T decode steps would see it:
queries are grouped by unit c and attend ``[view[:c*G] ; fp16(K[c*G : t+1])]`` (causal inside the
last part). Post-RoPE keys are what gets quantized (the attention function receives them).

``prefill="lossless"`` makes a first forward (no cached context) read plain fp16 K/V, as the kvarn
backend's first-chunk prefill does; later steps (decoding) follow the rule above.

Use::

    with simulate_cache(model, make_format("kvarn_k4v2_g128@improved", 64)) as sim:
        model(ids)              # teacher-forced, as decoding would see the cache
        sim.reset()             # before an unrelated sequence

The view of completed units is cached per layer and extended incrementally, so greedy decoding
quantizes each tile once (as the real flush does). Batches are unpadded (equal-length sequences).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

from kvarn.eval.kv_formats import KVFormat

ATTN_NAME = "kvarn_eval_cache"
PREFILL_MODES = ("decode", "lossless")
_ACTIVE: "CacheSimulator | None" = None


def _sdpa(q, k, v, mask, scaling, causal=False):
    """q [B,Hq,Tq,D], k/v [B,Hk,L,D] (GQA by head groups), mask bool [Tq, L] or None."""
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scaling, is_causal=causal, enable_gqa=k.shape[1] != q.shape[1]
    )


def _causal_mask(q_pos0: int, n_q: int, key_pos0: int, n_k: int, device) -> torch.Tensor:
    """bool [n_q, n_k]: key (global position key_pos0+j) visible to query (q_pos0+i) iff j-pos <= i-pos."""
    qp = torch.arange(q_pos0, q_pos0 + n_q, device=device)[:, None]
    kp = torch.arange(key_pos0, key_pos0 + n_k, device=device)[None, :]
    return kp <= qp


def plain_causal_attention(q, k, v, q_start: int, scaling: float | None) -> torch.Tensor:
    """Causal attention of queries at positions q_start.. over all keys [0, L). Returns [B,Hq,Tq,D]."""
    tq, length = q.shape[2], k.shape[2]
    if q_start == 0 and tq == length:
        return _sdpa(q, k, v, None, scaling, causal=tq > 1)
    if tq == 1:
        return _sdpa(q, k, v, None, scaling)
    return _sdpa(q, k, v, _causal_mask(q_start, tq, 0, length, q.device), scaling)


def cache_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_view: torch.Tensor,
    v_view: torch.Tensor,
    q_start: int,
    fmt: KVFormat,
    scaling: float | None,
) -> torch.Tensor:
    """Attention of q [B,Hq,Tq,D] (positions q_start..) over keys [0, L) read as the cache holds them.

    k, v: exact [B,Hk,L,D]; k_view, v_view: cache view [B,Hk,Lv,D] of the completed units (Lv a
    multiple of ``fmt.tile`` covering every unit before the last query's own; for per-token formats,
    Lv = L). Returns [B,Hq,Tq,D] in q's dtype.
    """
    if fmt.is_exact:
        return plain_causal_attention(q, k, v, q_start, scaling)
    if not fmt.fp16_tail:
        return plain_causal_attention(q, k_view[:, :, : k.shape[2]], v_view[:, :, : k.shape[2]], q_start, scaling)
    g, tq = fmt.tile, q.shape[2]
    k16, v16 = k.half().to(q.dtype), v.half().to(q.dtype)
    outs = []
    i = 0
    while i < tq:
        pos = q_start + i
        unit = pos // g
        j = min(tq, (unit + 1) * g - q_start)  # queries [i, j) share unit `unit`
        lo, hi = unit * g, q_start + j  # fp16 part of the keys: [lo, hi)
        keys = torch.cat([k_view[:, :, :lo], k16[:, :, lo:hi]], dim=2)
        vals = torch.cat([v_view[:, :, :lo], v16[:, :, lo:hi]], dim=2)
        mask = None
        if j - i > 1:
            mask = _causal_mask(pos, j - i, 0, hi, q.device)
        outs.append(_sdpa(q[:, :, i:j], keys, vals, mask, scaling))
        i = j
    return torch.cat(outs, dim=2)


class CacheSimulator:
    """Per-layer cache views of one batch of sequences for one format (see module doc)."""

    def __init__(self, fmt: KVFormat, prefill: str = "decode"):
        if prefill not in PREFILL_MODES:
            raise ValueError(f"prefill must be one of {PREFILL_MODES}, got {prefill!r}")
        self.fmt = fmt
        self.prefill = prefill
        self._views: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.quantized_tokens = 0  # tokens x layers passed through the codec (for logs/tests)

    def reset(self) -> None:
        self._views.clear()

    def _view(self, layer: int, k: torch.Tensor, v: torch.Tensor, upto: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cache view [B,Hk,>=upto,D] of positions [0, upto) (upto a multiple of tile, or L per-token)."""
        kv, vv = self._views.get(layer, (k[:, :, :0], v[:, :, :0]))
        have = kv.shape[2]
        if have < upto:
            b, h, _, d = k.shape
            fmt = self.fmt

            def fold(x):  # [B,Hk,n,D] -> [n, B*Hk, D]
                return x.permute(2, 0, 1, 3).reshape(-1, b * h, d)

            def unfold(x, n):
                return x.reshape(n, b, h, d).permute(1, 2, 0, 3).to(k.dtype)

            start = have
            parts_k, parts_v = [kv], [vv]
            if fmt.sink and start == 0:
                sink = min(fmt.tile, upto)
                if fmt.sink_quantize_fn is not None and sink == fmt.tile:
                    ks, vs = fmt.sink_quantize_fn(fold(k[:, :, :sink]).float(), fold(v[:, :, :sink]).float())
                    parts_k.append(unfold(ks, sink))
                    parts_v.append(unfold(vs, sink))
                else:
                    parts_k.append(k[:, :, :sink].half().to(k.dtype))
                    parts_v.append(v[:, :, :sink].half().to(v.dtype))
                start = sink
            if upto > start:
                n = upto - start
                kq, vq = fmt.quantize(fold(k[:, :, start:upto]), fold(v[:, :, start:upto]))
                parts_k.append(unfold(kq, n))
                parts_v.append(unfold(vq, n))
                self.quantized_tokens += n
            kv, vv = torch.cat(parts_k, dim=2), torch.cat(parts_v, dim=2)
            self._views[layer] = (kv, vv)
        return kv, vv

    def attend(self, layer: int, q, k, v, scaling: float | None) -> torch.Tensor:
        """q [B,Hq,Tq,D] at the last Tq positions of k, v [B,Hk,L,D] -> [B,Hq,Tq,D]."""
        length, tq = k.shape[2], q.shape[2]
        q_start = length - tq
        if q_start == 0:
            self._views.pop(layer, None)  # a new sequence starts
        fmt = self.fmt
        if fmt.is_exact:
            return plain_causal_attention(q, k, v, q_start, scaling)
        if q_start == 0 and self.prefill == "lossless":
            return plain_causal_attention(q, k.half().to(q.dtype), v.half().to(q.dtype), 0, scaling)
        if fmt.fp16_tail:
            upto = ((length - 1) // fmt.tile) * fmt.tile  # units before the last query's own unit
        else:
            upto = length
        kv, vv = self._view(layer, k, v, upto)
        return cache_attention(q, k, v, kv, vv, q_start, fmt, scaling)


def _attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers attention interface: returns ([B, Tq, Hq, D], None)."""
    sim = _ACTIVE
    if sim is None:
        raise RuntimeError(f"attn_implementation {ATTN_NAME!r} is only usable inside kvarn.eval simulate_cache()")
    out = sim.attend(module.layer_idx, query, key, value, scaling)
    return out.transpose(1, 2).contiguous(), None


def _no_mask(*args, **kwargs):
    return None


_registered = False


def register_attention() -> None:
    """Register :data:`ATTN_NAME` with transformers (attention + mask interfaces). Idempotent."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, _attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, _no_mask)
    _registered = True


@contextlib.contextmanager
def simulate_cache(model, fmt: KVFormat, prefill: str = "decode") -> Iterator[CacheSimulator]:
    """Run ``model`` (Llama/Qwen2-style transformers model) with attention reading a ``fmt`` cache."""
    global _ACTIVE
    register_attention()
    sim = CacheSimulator(fmt, prefill=prefill)
    old_impl = model.config._attn_implementation
    old_active = _ACTIVE
    model.set_attn_implementation(ATTN_NAME)
    _ACTIVE = sim
    try:
        yield sim
    finally:
        _ACTIVE = old_active
        model.set_attn_implementation(old_impl)
