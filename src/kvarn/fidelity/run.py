"""Run every kvarn preset x numerics option and every baseline over synthetic and captured K/V.

One result row per (method, source, head_dim), metrics averaged over that source's cases (seeds / layers x
passages). Row keys: :data:`ROW_KEYS`, plus ``head_dim`` and ``keep_sink`` (the run's tile policy).
A case is one layer's q, k, v; each method fake-quantizes (k, v) as its cache stores them, then
:func:`kvarn.fidelity.metrics.attention_metrics` compares.

Tile policy: ``keep_sink=False`` (default) quantizes every complete tile, the first one included; sequence
lengths are multiples of 128, so no ragged fp16 tail exists and every method stores every token quantized.
``keep_sink=True`` keeps the first tile fp16 for kvarn and kivi2 (their cache policy); vLLM's int4/fp8 formats
have no such policy and quantize every token either way.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

from kvarn.config import NUMERICS, PRESETS, KvarnConfig
from kvarn.fidelity.metrics import METRIC_KEYS, attention_metrics, exact_attention
from kvarn.fidelity.synthetic import KVSample, synthetic_kv
from kvarn.reference import roundtrip
from kvarn.reference.baselines import BASELINES, baseline_bytes_per_token, fake_quant

ROW_KEYS = ("method", "preset", "numerics", "bits_per_element", "bytes_per_token", *METRIC_KEYS, "source")
SOURCES = ("synthetic", "smollm2")


@dataclass(frozen=True)
class Method:
    """A cache format under test. ``apply(k, v, keep_sink)`` -> (k_hat, v_hat), both [T, H, D]."""

    method: str
    preset: str | None
    numerics: str | None
    bytes_per_token: Callable[[int], float]
    apply: Callable[[torch.Tensor, torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor]]


def _kvarn_method(preset: str, numerics: str) -> Method:
    def cfg(d: int) -> KvarnConfig:
        return KvarnConfig.from_name(preset, head_dim=d, numerics=numerics)

    return Method(
        method=f"kvarn_{preset}@{numerics}",
        preset=preset,
        numerics=numerics,
        bytes_per_token=lambda d: cfg(d).bytes_per_token,
        apply=lambda k, v, keep_sink: roundtrip(k, v, cfg(k.shape[-1]), keep_sink=keep_sink),
    )


def _baseline_method(name: str) -> Method:
    return Method(
        method=name,
        preset=None,
        numerics=None,
        bytes_per_token=lambda d: baseline_bytes_per_token(name, d),
        apply=lambda k, v, keep_sink: fake_quant(name, k, v, keep_sink=keep_sink),
    )


def all_methods(presets: Iterable[str] | None = None, numerics: Iterable[str] | None = None,
                baselines: Iterable[str] | None = None) -> list[Method]:
    """kvarn presets x numerics options, then the baselines (defaults: all of each)."""
    presets = list(PRESETS) if presets is None else list(presets)
    numerics = list(NUMERICS) if numerics is None else list(numerics)
    baselines = list(BASELINES) if baselines is None else list(baselines)
    for p in presets:
        if p not in PRESETS:
            raise ValueError(f"unknown preset {p!r}; valid: {', '.join(PRESETS)}")
    for n in numerics:
        if n not in NUMERICS:
            raise ValueError(f"unknown numerics {n!r}; valid: {', '.join(NUMERICS)}")
    return [_kvarn_method(p, n) for p in presets for n in numerics] + [_baseline_method(b) for b in baselines]


# ---- cases -----------------------------------------------------------------------------------------------
def synthetic_cases(seeds: int, tokens: int, head_dims: Iterable[int] = (128, 64),
                    v_stds: Iterable[float] = (0.05, 0.5)) -> Iterator[KVSample]:
    """D=128: 4 KV heads, 16 q-heads; D=64: 3 KV heads, 9 q-heads (SmolLM2's shape)."""
    for d in head_dims:
        h, hq = (4, 16) if d >= 128 else (3, 9)
        for v_std in v_stds:
            for s in range(seeds):
                yield synthetic_kv(tokens, h, d, num_q_heads=hq, v_std=v_std, seed=1000 * d + s)


def smollm2_cases(passages: int, tokens: int, layer_stride: int = 1, log=None) -> Iterator[KVSample]:
    """SmolLM2-135M-Instruct K/V/Q (head_dim 64), every ``layer_stride``-th layer, on ``passages`` Austen
    passages of ``tokens`` tokens, one per novel (skipping each novel's first 40 paragraphs: title, chapter 1)."""
    from kvarn.assets import austen_books, default_model_dir
    from kvarn.fidelity.capture import capture_qkv, load_model, passage_ids

    tok, model = load_model(default_model_dir("smollm2-135m"))
    n_layers = model.config.num_hidden_layers
    layers = list(range(0, n_layers, layer_stride))
    books = austen_books()
    titles = list(books)
    for j in range(passages):
        title = titles[j % len(titles)]
        ids = passage_ids(tok, books[title][40:], tokens, 1)[0]
        t0 = time.time()
        samples = capture_qkv(model, ids, layers)
        if log:
            log(f"captured {len(samples)} layers of SmolLM2 on {title!r} ({ids.shape[1]} tokens, {time.time() - t0:.1f} s)")
        for s in samples:
            s.name = f"smollm2 {title} {s.name}"
            yield s


# ---- the run ---------------------------------------------------------------------------------------------
def evaluate(cases: Iterable[KVSample], methods: list[Method], source: str, keep_sink: bool = False,
             progress: bool = True) -> list[dict]:
    """Mean metrics per (method, head_dim) over ``cases``; one row per method and head_dim."""
    sums: dict[tuple[str, int], dict[str, float]] = {}
    counts: dict[tuple[str, int], int] = {}
    by_name = {m.method: m for m in methods}
    n_case = 0
    for case in cases:
        d = case.k.shape[-1]
        n_case += 1
        exact = exact_attention(case.q, case.k, case.v)
        for m in methods:
            k_hat, v_hat = m.apply(case.k, case.v, keep_sink)
            res = attention_metrics(case.q, case.k, case.v, k_hat, v_hat, exact)
            acc = sums.setdefault((m.method, d), dict.fromkeys(METRIC_KEYS, 0.0))
            for key in METRIC_KEYS:
                acc[key] += res[key]
            counts[(m.method, d)] = counts.get((m.method, d), 0) + 1
        if progress:
            print(f"[kvarn fidelity] {source}: case {n_case} done ({case.name})", file=sys.stderr, flush=True)
    rows = []
    for (name, d), acc in sums.items():
        m = by_name[name]
        bpt = float(m.bytes_per_token(d))
        row = {
            "method": m.method,
            "preset": m.preset,
            "numerics": m.numerics,
            "bits_per_element": 8.0 * bpt / (2 * d),
            "bytes_per_token": bpt,
            **{key: acc[key] / counts[(name, d)] for key in METRIC_KEYS},
            "source": source,
            "head_dim": d,
            "keep_sink": keep_sink,
        }
        rows.append(row)
    return rows


def run_fidelity(sources: Iterable[str] = SOURCES, quick: bool = False, keep_sink: bool = False,
                 seeds: int | None = None, passages: int | None = None, tokens: int | None = None,
                 layer_stride: int | None = None, methods: list[Method] | None = None,
                 progress: bool = True) -> list[dict]:
    """The full ``kvarn fidelity`` run. quick: 1 seed x 256 tokens, 1 passage x 256 tokens, every 10th layer."""
    methods = methods or all_methods()
    sources = list(sources)
    for s in sources:
        if s not in SOURCES:
            raise ValueError(f"unknown source {s!r}; valid: {', '.join(SOURCES)}")
    log = (lambda msg: print(f"[kvarn fidelity] {msg}", file=sys.stderr, flush=True)) if progress else None
    rows: list[dict] = []
    if "synthetic" in sources:
        n_seeds = seeds or (1 if quick else 2)
        t = tokens or (256 if quick else 1024)
        rows += evaluate(synthetic_cases(n_seeds, t), methods, "synthetic", keep_sink, progress)
    if "smollm2" in sources:
        n_pass = passages or (1 if quick else 2)
        t = tokens or (256 if quick else 1024)
        stride = layer_stride or (10 if quick else 2)
        rows += evaluate(smollm2_cases(n_pass, t, stride, log), methods, "smollm2", keep_sink, progress)
    return rows
