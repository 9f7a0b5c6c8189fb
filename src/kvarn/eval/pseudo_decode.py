"""Teacher-forced drift ("pseudo-decode"): the model reads a long text with its KV cache in each format.

For every position p of a passage of T tokens the model predicts token p+1 from a context read
exactly as decoding would read the cache (see :mod:`kvarn.eval.cache_attention`). Against the same
model with an unquantized cache (format ``bf16``) we measure, per position::

    nll_f(p)  = -log softmax(z_f(p))[x_{p+1}]             perplexity = exp(mean nll)
    KL(p)     = sum_v P_ref(v|p) (log P_ref(v|p) - log P_f(v|p))
    agree(p)  = argmax P_ref(.|p) == argmax P_f(.|p)      top-1 agreement

and aggregate over all passages, overall and per position bucket (does error grow with context?):
ppl, relative ppl change ``ppl_f / ppl_ref - 1``, mean and p99 KL, top-1 agreement.
Logits are formed chunk by chunk from the final hidden states (never [T, vocab] for all T at once).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from kvarn.eval.cache_attention import simulate_cache
from kvarn.eval.data import Passage
from kvarn.eval.kv_formats import KVFormat

BUCKET_EDGES = (0, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def bucket_edges(n_positions: int, edges=BUCKET_EDGES) -> list[tuple[int, int]]:
    """[lo, hi) position ranges covering [0, n_positions)."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        if lo >= n_positions:
            break
        out.append((lo, min(hi, n_positions)))
    return out


def final_hidden(model, ids: torch.Tensor, fmt: KVFormat, prefill: str = "decode") -> torch.Tensor:
    """Last hidden states [B, T, hidden] of ``ids`` [B, T] with the cache read in ``fmt``."""
    with torch.no_grad(), simulate_cache(model, fmt, prefill=prefill):
        return model.model(input_ids=ids).last_hidden_state


def compare_logits(model, h_ref: torch.Tensor, h: torch.Tensor | None, targets: torch.Tensor, chunk: int = 256):
    """Per-position stats of one sequence. h_ref, h [T', hidden]; targets [T'] (next tokens).

    Returns dict of fp32 [T'] tensors: nll_ref, and (when h is given) nll, kl, agree.
    """
    out: dict[str, list[torch.Tensor]] = {"nll_ref": [], "nll": [], "kl": [], "agree": []}
    with torch.no_grad():
        for a in range(0, h_ref.shape[0], chunk):
            b = min(a + chunk, h_ref.shape[0])
            tgt = targets[a:b, None]
            lr = torch.log_softmax(model.lm_head(h_ref[a:b]).float(), dim=-1)
            out["nll_ref"].append(-lr.gather(1, tgt)[:, 0])
            if h is None:
                continue
            lf = torch.log_softmax(model.lm_head(h[a:b]).float(), dim=-1)
            out["nll"].append(-lf.gather(1, tgt)[:, 0])
            out["kl"].append((lr.exp() * (lr - lf)).sum(-1).clamp_min(0))
            out["agree"].append((lr.argmax(-1) == lf.argmax(-1)).float())
    return {k: torch.cat(v) for k, v in out.items() if v}


def summarize(nll_ref: torch.Tensor, nll: torch.Tensor, kl: torch.Tensor, agree: torch.Tensor) -> dict:
    """Aggregate per-position stats (1-D tensors of equal length)."""
    ppl_ref = math.exp(nll_ref.double().mean().item())
    ppl = math.exp(nll.double().mean().item())
    return {
        "positions": int(nll.numel()),
        "ppl": ppl,
        "ppl_ref": ppl_ref,
        "rel_ppl": ppl / ppl_ref - 1.0,
        "kl_mean": kl.double().mean().item(),
        "kl_p99": torch.quantile(kl.double(), 0.99).item() if kl.numel() else float("nan"),
        "top1": agree.double().mean().item(),
    }


def run_pseudo_decode(
    model,
    passages: list[Passage],
    formats: list[KVFormat],
    prefill: str = "decode",
    log: Callable[[str], None] = print,
    on_partial: Callable[[dict], None] | None = None,
) -> dict:
    """Teacher-forced drift of every format over ``passages`` (see module doc).

    ``on_partial(result)`` (optional) is called after each format of each passage with the result so
    far (formats finished on every passage seen), so long runs can save progress.

    Returns {"passages": [...], "buckets": [[lo, hi], ...], "formats": {name: {bits_per_element,
    seconds, overall: summary, buckets: [summary + lo/hi, ...]}}}. ``formats`` must include bf16
    (the reference; its row is exact zeros of drift).
    """
    ref = next((f for f in formats if f.is_exact), None)
    if ref is None:
        raise ValueError("formats must include the unquantized reference 'bf16'")
    acc: dict[str, dict[str, list[torch.Tensor]]] = {f.name: {"nll": [], "kl": [], "agree": []} for f in formats}
    nll_ref_all: list[torch.Tensor] = []
    pos_all: list[torch.Tensor] = []
    seconds = {f.name: 0.0 for f in formats}
    for pi, p in enumerate(passages):
        ids = p.ids[None]
        targets = p.ids[1:]
        t0 = time.time()
        h_ref = final_hidden(model, ids, ref)[0, :-1]
        seconds[ref.name] += time.time() - t0
        base = compare_logits(model, h_ref, None, targets)
        nll_ref_all.append(base["nll_ref"])
        pos_all.append(torch.arange(targets.numel()))
        acc[ref.name]["nll"].append(base["nll_ref"])
        acc[ref.name]["kl"].append(torch.zeros_like(base["nll_ref"]))
        acc[ref.name]["agree"].append(torch.ones_like(base["nll_ref"]))
        log(f"  passage {pi + 1}/{len(passages)} ({p.book}, {targets.numel() + 1} tokens): "
            f"ref ppl {math.exp(base['nll_ref'].double().mean().item()):.3f}")
        for fmt in formats:
            if fmt is ref:
                continue
            t0 = time.time()
            h = final_hidden(model, ids, fmt, prefill=prefill)[0, :-1]
            st = compare_logits(model, h_ref, h, targets)
            seconds[fmt.name] += time.time() - t0
            for k in ("nll", "kl", "agree"):
                acc[fmt.name][k].append(st[k])
            log(f"    {fmt.name:28s} ppl {math.exp(st['nll'].double().mean().item()):8.3f}  "
                f"KL {st['kl'].mean().item():.4f}  top1 {st['agree'].mean().item():.3f}  ({time.time() - t0:.1f} s)")
            if on_partial is not None:
                on_partial(_finalize(passages[: pi + 1], prefill, formats, acc, nll_ref_all, pos_all, seconds))
    return _finalize(passages, prefill, formats, acc, nll_ref_all, pos_all, seconds)


def _finalize(passages, prefill, formats, acc, nll_ref_all, pos_all, seconds) -> dict:
    nll_ref = torch.cat(nll_ref_all)
    pos = torch.cat(pos_all)
    buckets = bucket_edges(int(pos.max().item()) + 1)
    result = {"passages": [p.meta() for p in passages], "prefill": prefill, "buckets": [list(b) for b in buckets],
              "formats": {}}
    for fmt in formats:
        if len(acc[fmt.name]["nll"]) != len(nll_ref_all):
            continue  # not finished on every passage yet (partial result)
        a = {k: torch.cat(v) for k, v in acc[fmt.name].items()}
        rows = []
        for lo, hi in buckets:
            m = (pos >= lo) & (pos < hi)
            rows.append({"lo": lo, "hi": hi, **summarize(nll_ref[m], a["nll"][m], a["kl"][m], a["agree"][m])})
        result["formats"][fmt.name] = {
            "bits_per_element": fmt.bits_per_element,
            "seconds": round(seconds[fmt.name], 2),
            "overall": summarize(nll_ref, a["nll"], a["kl"], a["agree"]),
            "buckets": rows,
        }
    return result
