"""Capture post-RoPE queries, keys and values per layer from a real model run with transformers on CPU.

transformers routes every attention layer through ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``
with ``query [B, Hq, T, D]`` and ``key``/``value`` ``[B, Hkv, T, D]`` already RoPE-rotated (and before the
GQA repeat). :func:`capture_qkv` registers an attention function ``kvarn_capture`` that records them and then
runs the stock SDPA, so the forward pass is unchanged. Captured tensors are returned as ``[T, H, D]`` fp32
(vLLM's layout), one :class:`~kvarn.fidelity.synthetic.KVSample` per layer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kvarn.fidelity.synthetic import KVSample

_CAPTURE_NAME = "kvarn_capture"


def load_model(model_dir: str | Path):
    """(tokenizer, model) from a local HF folder, fp32 on CPU, eval mode."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(f"capturing K/V needs transformers ({e}); install kvarn[models]") from e
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return tok, model.eval()


def capture_qkv(model, input_ids: torch.Tensor, layers: list[int] | None = None) -> list[KVSample]:
    """Run ``model`` on input_ids [1, T] and return one KVSample (q [T,Hq,D], k/v [T,Hkv,D]) per layer.

    ``layers`` selects layer indices (default: all). Works for any transformers model whose attention layers
    dispatch through ``AttentionInterface`` (llama, qwen2, qwen3, gemma3, ...).
    """
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be [1, T], got {tuple(input_ids.shape)}")
    store: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    want = None if layers is None else set(layers)

    def capture(module, query, key, value, attention_mask, **kwargs):
        idx = getattr(module, "layer_idx", len(store))
        if want is None or idx in want:
            to_thd = lambda x: x[0].transpose(0, 1).detach().float().clone()  # [B,H,T,D] -> [T,H,D]
            store[idx] = (to_thd(query), to_thd(key), to_thd(value))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(_CAPTURE_NAME, capture)
    previous = model.config._attn_implementation
    model.set_attn_implementation(_CAPTURE_NAME)
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
    if not store:
        raise RuntimeError("no attention layer was captured; does this model dispatch through AttentionInterface?")
    return [KVSample(q=q, k=k, v=v, name=f"layer{i}") for i, (q, k, v) in sorted(store.items())]


def passage_ids(tokenizer, texts: list[str], tokens: int, count: int, multiple: int = 128) -> list[torch.Tensor]:
    """Up to ``count`` token id tensors [1, T] of ``tokens`` tokens (rounded down to ``multiple``), each built
    by concatenating consecutive paragraphs of ``texts`` (separated by blank lines) from a distinct start."""
    tokens = (tokens // multiple) * multiple
    if tokens <= 0:
        raise ValueError(f"tokens must be >= {multiple}")
    out, i = [], 0
    while len(out) < count and i < len(texts):
        ids: list[int] = []
        while len(ids) < tokens and i < len(texts):
            ids.extend(tokenizer(texts[i] + "\n\n", add_special_tokens=False).input_ids)
            i += 1
        if len(ids) >= tokens:
            out.append(torch.tensor([ids[:tokens]]))
    if not out:
        raise ValueError(f"not enough text for one passage of {tokens} tokens")
    return out
