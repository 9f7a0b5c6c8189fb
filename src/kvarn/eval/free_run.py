"""Free-running drift: greedy generations with the cache in each format vs the unquantized cache.

Each prompt (an Austen passage of 600-3,000 tokens) is continued greedily for ``n_new`` tokens (EOS
ignored, as vLLM's ``ignore_eos``). Per prompt we record whether the whole continuation equals the
bf16-cache one (exact match) and the first divergence position (index of the first differing token,
``n_new`` when none). Greedy decoding is chaotic: a single flipped near-tie changes everything after
it, so the distribution of first-divergence positions is the informative number, not the tail.

Prompts of equal length are batched (no padding). Prefill follows ``prefill`` (see
:mod:`kvarn.eval.cache_attention`: "decode" = every prompt token reads the cache as decoding would,
"lossless" = the kvarn backend's first-chunk prefill on fp16 K/V); generated tokens always read the
simulated cache with tiles quantized as they complete.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from kvarn.eval.cache_attention import simulate_cache
from kvarn.eval.kv_formats import KVFormat

DIVERGENCE_BINS = (0, 1, 16, 64, 128, 256, 512, 1024)


def greedy_generate(model, fmt: KVFormat, prompt: torch.Tensor, n_new: int, prefill: str = "decode") -> torch.Tensor:
    """Greedy continuation [B, n_new] of ``prompt`` [B, P] (unpadded batch) with the cache in ``fmt``."""
    from transformers import DynamicCache

    with torch.no_grad(), simulate_cache(model, fmt, prefill=prefill) as sim:
        sim.reset()
        cache = DynamicCache(config=model.config)
        out = model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
        tok = out.logits[:, -1].argmax(-1)
        gen = [tok]
        for _ in range(n_new - 1):
            out = model(input_ids=tok[:, None], past_key_values=cache, use_cache=True)
            tok = out.logits[:, -1].argmax(-1)
            gen.append(tok)
    return torch.stack(gen, dim=1)


def first_divergence(ref: list[int], got: list[int]) -> int:
    """Index of the first differing token (len(ref) when equal over the common length)."""
    for i, (a, b) in enumerate(zip(ref, got)):
        if a != b:
            return i
    return min(len(ref), len(got))


def divergence_summary(divs: list[int], n_new: int) -> dict:
    """exact-match rate, quantiles and a histogram of first-divergence positions."""
    if not divs:
        return {}
    s = sorted(divs)
    q = lambda f: s[min(len(s) - 1, int(f * (len(s) - 1) + 0.5))]  # noqa: E731
    hist = {}
    edges = [e for e in DIVERGENCE_BINS if e < n_new] + [n_new]
    for lo, hi in zip(edges[:-1], edges[1:]):
        hist[f"[{lo},{hi})"] = sum(lo <= d < hi for d in divs)
    hist[f"none (>= {n_new})"] = sum(d >= n_new for d in divs)
    return {
        "prompts": len(divs),
        "exact_match": sum(d >= n_new for d in divs) / len(divs),
        "first_div_mean": statistics.fmean(divs),
        "first_div_p25": q(0.25),
        "first_div_median": q(0.5),
        "first_div_p75": q(0.75),
        "first_div_min": s[0],
        "histogram": hist,
    }


def group_by_length(prompts: list[torch.Tensor], batch: int) -> list[list[int]]:
    """Indices of prompts grouped into unpadded batches of equal length (at most ``batch`` each)."""
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(int(p.numel()), []).append(i)
    groups = []
    for _, idx in sorted(by_len.items()):
        for a in range(0, len(idx), batch):
            groups.append(idx[a:a + batch])
    return groups


def generate_all(model, fmt: KVFormat, prompts: list[torch.Tensor], n_new: int, prefill: str, batch: int) -> list[list[int]]:
    outs: list[list[int]] = [[] for _ in prompts]
    for group in group_by_length(prompts, batch):
        gen = greedy_generate(model, fmt, torch.stack([prompts[i] for i in group]), n_new, prefill)
        for j, i in enumerate(group):
            outs[i] = gen[j].tolist()
    return outs


def run_free_run(
    model,
    prompts: list[torch.Tensor],
    formats: list[KVFormat],
    n_new: int,
    prefill: str = "decode",
    batch: int = 4,
    prompt_meta: list[dict] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Greedy generations of every format; first divergence vs the ``bf16`` (exact) format."""
    ref = next((f for f in formats if f.is_exact), None)
    if ref is None:
        raise ValueError("formats must include the unquantized reference 'bf16'")
    result = {"n_new": n_new, "prefill": prefill, "prompts": prompt_meta or [{"tokens": int(p.numel())} for p in prompts],
              "formats": {}}
    t0 = time.time()
    ref_out = generate_all(model, ref, prompts, n_new, prefill, batch)
    log(f"  bf16: {len(prompts)} prompts x {n_new} tokens in {time.time() - t0:.1f} s")
    result["formats"][ref.name] = {"bits_per_element": ref.bits_per_element, "seconds": round(time.time() - t0, 1),
                                   "first_divergence": [n_new] * len(prompts),
                                   **divergence_summary([n_new] * len(prompts), n_new)}
    result["reference_tokens"] = ref_out
    for fmt in formats:
        if fmt is ref:
            continue
        t0 = time.time()
        outs = generate_all(model, fmt, prompts, n_new, prefill, batch)
        divs = [first_divergence(r, o) for r, o in zip(ref_out, outs)]
        summ = divergence_summary(divs, n_new)
        result["formats"][fmt.name] = {"bits_per_element": fmt.bits_per_element, "seconds": round(time.time() - t0, 1),
                                       "first_divergence": divs, **summ}
        log(f"  {fmt.name:28s} exact {summ['exact_match']:.2f}  first-div median {summ['first_div_median']}  "
            f"mean {summ['first_div_mean']:.1f}  ({time.time() - t0:.1f} s)")
    return result
