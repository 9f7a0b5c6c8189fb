"""Per-level serving metrics, computed exactly as ``vllm bench serve`` computes them.

Given successful requests i (times in s) and the level's wall time ``dur``:

* TTFT_i, E2EL_i = latency_i, ITL = every inter-chunk gap of every request (pooled)
* TPOT_i = (E2EL_i - TTFT_i) / (out_i - 1)   for out_i > 1 (requests with out_i <= 1 are left out
  of the TPOT statistics and count as TPOT 0 for goodput)
* mean / median / pXX use numpy (``np.percentile``, linear interpolation), reported in ms with keys
  ``mean_ttft_ms``, ``median_ttft_ms``, ``p95_ttft_ms``, ``p99_ttft_ms`` (same for tpot, itl, e2el)
* output_throughput = sum(out_i) / dur; total_token_throughput = sum(prompt_i + out_i) / dur;
  request_throughput = completed / dur
* request_goodput = #{i : TTFT_i <= slo.ttft and TPOT_i <= slo.tpot and E2EL_i <= slo.e2el} / dur
  (only the SLO terms that are set; vLLM's ``--goodput ttft:X tpot:Y``); ``good_fraction`` adds
  the same count over all requests (failed requests are never good)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from kvarn.bench.client import RequestResult

PERCENTILES = (50, 90, 95, 99)
METRIC_NAMES = ("ttft", "tpot", "itl", "e2el")
SLO_KEYS = ("ttft_ms", "tpot_ms", "e2el_ms")


@dataclass(frozen=True)
class SLO:
    """Latency objectives in ms; None = not constrained. ``percentile`` is the level's SLO test:
    a level meets the SLO when its p{percentile} TTFT/TPOT/E2EL are all within the bounds."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None
    percentile: int = 95

    @classmethod
    def parse(cls, text: str | None, percentile: int = 95) -> "SLO":
        """Parse ``ttft_ms=2000,tpot_ms=80`` (``ttft``/``ttft:2000`` also accepted)."""
        if percentile not in PERCENTILES:
            raise ValueError(f"SLO percentile must be one of {PERCENTILES}, got {percentile}")
        vals: dict[str, float] = {}
        for part in (text or "").replace(":", "=").split(","):
            if not part.strip():
                continue
            k, _, v = part.partition("=")
            k = k.strip().lower()
            k = k if k.endswith("_ms") else k + "_ms"
            if k not in SLO_KEYS or not v.strip():
                raise ValueError(f"bad SLO term {part!r}; valid: {', '.join(SLO_KEYS)} as key=milliseconds")
            vals[k] = float(v)
        return cls(percentile=percentile, **vals)

    def as_dict(self) -> dict:
        return {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms, "e2el_ms": self.e2el_ms,
                "percentile": self.percentile}

    def is_set(self) -> bool:
        return any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.e2el_ms))


def request_tpot(r: RequestResult) -> float:
    """TPOT of one request in seconds (0 when it produced <= 1 token)."""
    return (r.latency - r.ttft) / (r.output_tokens - 1) if r.output_tokens > 1 else 0.0


def is_good(r: RequestResult, slo: SLO) -> bool:
    if not r.success:
        return False
    checks = ((slo.ttft_ms, r.ttft), (slo.tpot_ms, request_tpot(r)), (slo.e2el_ms, r.latency))
    return all(bound is None or value * 1000.0 <= bound for bound, value in checks)


def _stats(name: str, values_s: list[float], out: dict) -> None:
    arr = np.asarray(values_s if values_s else [0.0], dtype=np.float64) * 1000.0
    out[f"mean_{name}_ms"] = float(np.mean(arr))
    out[f"median_{name}_ms"] = float(np.median(arr))
    out[f"std_{name}_ms"] = float(np.std(arr))
    for p in PERCENTILES:
        out[f"p{p}_{name}_ms"] = float(np.percentile(arr, p))


def compute_level_metrics(results: Iterable[RequestResult], duration_s: float, slo: SLO | None = None) -> dict:
    """vLLM-named metrics of one load level (see module docstring)."""
    results = list(results)
    slo = slo or SLO()
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    ok = [r for r in results if r.success]
    ttfts = [r.ttft for r in ok]
    tpots = [request_tpot(r) for r in ok if r.output_tokens > 1]
    itls = [x for r in ok for x in r.itl]
    e2els = [r.latency for r in ok]
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    good = sum(1 for r in ok if is_good(r, slo)) if slo.is_set() else len(ok)
    m: dict = {
        "duration": duration_s,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration_s,
        "request_goodput": good / duration_s,
        "good_fraction": good / len(results) if results else 0.0,
        "output_throughput": total_out / duration_s,
        "total_token_throughput": (total_in + total_out) / duration_s,
    }
    for name, vals in zip(METRIC_NAMES, (ttfts, tpots, itls, e2els)):
        _stats(name, vals, m)
    errors = sorted({r.error for r in results if not r.success and r.error})
    m["errors"] = errors[:5]
    return m


def meets_slo(level: dict, slo: SLO) -> bool:
    """True when the level's p{percentile} latencies are within every set SLO bound. A level that
    lacks that percentile (an imported ``vllm bench serve`` file) is judged on p99, then the mean."""
    p = slo.percentile
    for key, bound in (("ttft", slo.ttft_ms), ("tpot", slo.tpot_ms), ("e2el", slo.e2el_ms)):
        if bound is None:
            continue
        value = next((level[k] for k in (f"p{p}_{key}_ms", f"p99_{key}_ms", f"mean_{key}_ms")
                      if level.get(k) is not None), None)
        if value is not None and value > bound:
            return False
    return True


def is_stable(level: dict, slo: SLO) -> bool:
    """Stable = completed something, meets the SLO, no failed request and no preemption."""
    return (level.get("completed", 0) > 0 and level.get("failed", 0) == 0
            and (level.get("num_preemptions") or 0) == 0 and meets_slo(level, slo))


def max_stable_concurrency(levels: list[dict], slo: SLO) -> int:
    """Highest concurrency such that it and every lower measured level are stable (0 if none)."""
    best = 0
    for lv in sorted((x for x in levels if x.get("concurrency")), key=lambda x: x["concurrency"]):
        if not is_stable(lv, slo):
            break
        best = lv["concurrency"]
    return best
