"""The verdict: which resource binds, whether the quantized arm moved it in the user's favour, and a
one-line recommendation with the numbers behind it.

Binding resource (read from the baseline arm's sweep):

* ``kv_memory`` - a level preempted, or peak ``kv_cache_usage_perc`` >= ``KV_PRESSURE`` (0.90):
  the KV cache is what limits admitted sequences (memory pressure: yes).
* ``latency``   - the sweep stopped on the SLO with no KV pressure: per-step compute makes the
  latency target bind first (memory pressure: no).
* ``compute``   - no level broke: throughput is limited by compute over the measured range.

Effect of the candidate (the first kvarn arm, else the first non-baseline arm) vs the baseline:
``msc`` = max stable concurrency, ``thr`` = best output tok/s among stable levels ("throughput at
SLO"), p95 TTFT/TPOT and output tok/s at the highest level both arms measured, quality drift.

* capacity up/down: msc_cand >/< msc_base; throughput up/down: thr_cand >=/<= (1 +/- ``GAIN``) * thr_base
* regression: capacity down, or throughput down without capacity up
* trade-off: capacity up with throughput down -> "ship with caveat"
* quality: ``token_agreement`` >= 0.8 ok, >= 0.5 drift (caveat), else poor

Recommendation: failed arm or regression or poor quality -> "don't ship"; favourable and quality
ok -> "ship"; favourable with drift -> "ship with caveat"; neutral with more KV capacity ->
"ship with caveat" (headroom only); neutral otherwise -> "don't ship". A "ship" whose arm holds
memory outside the KV budget (kvarn's fp16 pool) above 25% of that budget (known when the run set
``--kv-memory``) becomes "ship with caveat": the comparison was not at equal total memory.
"""

from __future__ import annotations

KV_PRESSURE = 0.90
GAIN = 0.05
QUALITY_OK, QUALITY_DRIFT = 0.8, 0.5
SIDE_MEMORY_SHARE = 0.25  # memory outside the KV budget above this share of it turns "ship" into a caveat


def _pick(result: dict) -> tuple[dict | None, dict | None]:
    arms = result.get("arms") or []
    base = next((a for a in arms if a["name"] == result.get("baseline")), arms[0] if arms else None)
    others = [a for a in arms if a is not base]
    cand = next((a for a in others if a["kv_cache_dtype"].startswith("kvarn_")), others[0] if others else None)
    return base, cand


def binding_resource(arm: dict) -> str:
    levels = arm.get("levels") or []
    if not levels:
        return "unknown"
    if any((lv.get("num_preemptions") or 0) > 0 or (lv.get("max_kv_cache_usage_perc") or 0) >= KV_PRESSURE
           for lv in levels):
        return "kv_memory"
    return "latency" if arm.get("stop_reason") == "slo" else "compute"


def _level_key(lv: dict):
    return lv.get("concurrency") or lv.get("request_rate")


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def compare(base: dict, cand: dict) -> dict:
    """Numbers of the candidate against the baseline (see module docstring)."""
    common = sorted(set(map(_level_key, base.get("levels") or [])) & set(map(_level_key, cand.get("levels") or [])))
    at = common[-1] if common else None
    lb = next((x for x in base.get("levels") or [] if _level_key(x) == at), {})
    lc = next((x for x in cand.get("levels") or [] if _level_key(x) == at), {})
    q = cand.get("quality") or {}
    return {
        "kv_capacity_tokens": [base.get("kv_capacity_tokens"), cand.get("kv_capacity_tokens")],
        "kv_capacity_ratio": _ratio(cand.get("kv_capacity_tokens"), base.get("kv_capacity_tokens")),
        "max_stable_concurrency": [base.get("max_stable_concurrency"), cand.get("max_stable_concurrency")],
        "throughput_at_slo": [base.get("throughput_at_slo"), cand.get("throughput_at_slo")],
        "throughput_at_slo_ratio": _ratio(cand.get("throughput_at_slo"), base.get("throughput_at_slo")),
        "compared_level": at,
        "output_throughput_at_level": [lb.get("output_throughput"), lc.get("output_throughput")],
        "p95_ttft_ms_at_level": [lb.get("p95_ttft_ms"), lc.get("p95_ttft_ms")],
        "p95_tpot_ms_at_level": [lb.get("p95_tpot_ms"), lc.get("p95_tpot_ms")],
        "preemptions_at_level": [lb.get("num_preemptions"), lc.get("num_preemptions")],
        "exact_match_rate": q.get("exact_match_rate"),
        "token_agreement": q.get("token_agreement"),
        "mean_logprob_diff": q.get("mean_logprob_diff"),
    }


def _fmt(x, nd=1) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.{nd}f}" if isinstance(x, float) else f"{x:,}"


def decide(result: dict) -> dict:
    """The verdict object of one result (stored under ``result["verdict"]``)."""
    base, cand = _pick(result)
    wl = (result.get("workload") or {}).get("name", "?")
    if base is None or cand is None:
        return {"recommendation": "n/a", "headline": "need two arms (a baseline and a candidate) for a verdict",
                "binding_resource": "unknown", "memory_pressure": None, "baseline": base and base["name"],
                "candidate": None, "reasons": [], "numbers": {}}
    v = {"baseline": base["name"], "candidate": cand["name"], "workload": wl}
    if base.get("status") not in ("ok",) or not base.get("levels"):
        v.update(recommendation="n/a", binding_resource="unknown", memory_pressure=None, numbers={},
                 reasons=[f"baseline {base['name']} has no measurements ({base.get('status')}: {base.get('error')})"])
        v["headline"] = f"NO VERDICT: {v['reasons'][0]}"
        return v
    binding = binding_resource(base)
    v.update(binding_resource=binding, memory_pressure=binding == "kv_memory")
    if cand.get("status") != "ok" or not cand.get("levels"):
        v.update(recommendation="don't ship", numbers={},
                 reasons=[f"{cand['name']} did not run: {cand.get('status')}: {cand.get('error')}"])
        v["headline"] = f"DON'T SHIP {cand['name']} for {wl}: {v['reasons'][0]}"
        return v
    n = compare(base, cand)
    v["numbers"] = n
    msc_b, msc_c = n["max_stable_concurrency"]
    thr_b, thr_c = n["throughput_at_slo"]
    mode_rate = result.get("mode") == "rate"
    if mode_rate:
        msc_b, msc_c = base.get("max_stable_request_rate") or 0, cand.get("max_stable_request_rate") or 0
    thr_r = n["throughput_at_slo_ratio"]
    cap_up, cap_down = msc_c > msc_b, msc_c < msc_b
    thr_up = (thr_r is not None and thr_r >= 1 + GAIN) or (not thr_b and bool(thr_c))
    thr_down = (thr_r is not None and thr_r <= 1 - GAIN) or (not thr_c and bool(thr_b))
    better = (cap_up or thr_up) and not cap_down
    ta = n["token_agreement"]
    quality = "unknown" if ta is None else "ok" if ta >= QUALITY_OK else "drift" if ta >= QUALITY_DRIFT else "poor"
    reasons = [_binding_reason(binding, base)]
    what = "max stable request rate" if mode_rate else "max stable concurrency"
    reasons.append(f"{what} {_fmt(msc_b)} -> {_fmt(msc_c)}; throughput at SLO {_fmt(thr_b)} -> {_fmt(thr_c)} "
                   f"out tok/s ({_fmt(thr_r, 2)}x)")
    if n["compared_level"] is not None:
        reasons.append(f"at {'rate' if mode_rate else 'concurrency'} {n['compared_level']}: p95 TTFT "
                       f"{_fmt(n['p95_ttft_ms_at_level'][0])} -> {_fmt(n['p95_ttft_ms_at_level'][1])} ms, p95 TPOT "
                       f"{_fmt(n['p95_tpot_ms_at_level'][0])} -> {_fmt(n['p95_tpot_ms_at_level'][1])} ms, "
                       f"{_fmt(n['output_throughput_at_level'][0])} -> {_fmt(n['output_throughput_at_level'][1])} "
                       f"out tok/s")
    if n["kv_capacity_ratio"]:
        reasons.append(f"KV capacity {_fmt(n['kv_capacity_tokens'][0])} -> {_fmt(n['kv_capacity_tokens'][1])} tokens "
                       f"({n['kv_capacity_ratio']:.2f}x)")
    if cand.get("side_memory_bytes"):
        reasons.append(f"{cand['name']} also holds {cand['side_memory_bytes'] / 2**20:,.1f} MiB of fp16 sink/tail pool "
                       "outside the KV budget (not in the capacity above)")
    if ta is not None:
        reasons.append(f"quality vs {base['name']}: {_fmt(n['exact_match_rate'], 2)} exact greedy match, "
                       f"{_fmt(ta, 2)} agreeing prefix, mean logprob diff {_fmt(n['mean_logprob_diff'], 3)} ({quality})")
    def _gains() -> str:
        g = [f"more requests within the SLO ({_fmt(msc_b)} -> {_fmt(msc_c)})"] if cap_up else []
        g += [f"{_fmt(thr_r, 2)}x throughput at the SLO"] if thr_up and thr_r is not None else []
        return " and ".join(g) or "more throughput at the SLO"

    if cap_down or (thr_down and not cap_up):
        rec, why = "don't ship", f"{cand['name']} is slower or admits fewer requests here"
    elif quality == "poor":
        rec, why = "don't ship", "greedy outputs drift too far from the baseline"
    elif cap_up and thr_down:
        rec, why = "ship with caveat", (f"more requests within the SLO ({_fmt(msc_b)} -> {_fmt(msc_c)}) but lower "
                                        f"throughput at the SLO ({_fmt(thr_r, 2)}x): a capacity/speed trade-off")
    elif better and quality in ("ok", "unknown"):
        rec, why = "ship", f"{cand['name']} moves the binding resource in your favour: {_gains()}"
    elif better:
        rec, why = "ship with caveat", f"{_gains()}, but check task quality (greedy drift)"
    elif (n["kv_capacity_ratio"] or 0) > 1.2:
        rec, why = "ship with caveat", ("no gain at this load (memory does not bind); it buys "
                                        f"{n['kv_capacity_ratio']:.1f}x KV headroom for longer contexts or bursts")
    else:
        rec, why = "don't ship", "no measurable gain for this workload; quantization only adds work"
    if rec == "ship with caveat" and quality == "drift" and "quality" not in why:
        why += "; check task quality (greedy drift)"
    side, budget = cand.get("side_memory_bytes") or 0, result.get("kv_memory_bytes")
    if rec.startswith("ship") and budget and side > SIDE_MEMORY_SHARE * budget:
        rec = "ship with caveat"
        why += (f"; its fp16 pool ({side / 2**20:,.1f} MiB) is {side / budget:.1f}x the {budget / 2**20:,.1f} MiB "
                "KV budget, so this was not an equal-total-memory comparison")
    v.update(recommendation=rec, reasons=reasons, favourable=bool(better and not thr_down), quality=quality)
    v["headline"] = (f"{rec.upper()}: {cand['name']} vs {base['name']} on {wl}: {why}. Binding resource: "
                     f"{binding.replace('_', ' ')}; {what} {_fmt(msc_b)} -> {_fmt(msc_c)}, throughput at SLO "
                     f"{_fmt(thr_r, 2)}x" + (f", greedy agreement {ta:.2f}" if ta is not None else "") + ".")
    return v


def _binding_reason(binding: str, base: dict) -> str:
    if binding == "kv_memory":
        pre = sum((lv.get("num_preemptions") or 0) for lv in base["levels"])
        kv = max((lv.get("max_kv_cache_usage_perc") or 0) for lv in base["levels"])
        return (f"memory pressure: {base['name']} preempted {pre} time(s), peak KV usage {kv:.0%}: "
                "KV memory binds")
    if binding == "latency":
        return f"no memory pressure; {base['name']} missed the latency SLO first: compute latency binds"
    return f"no memory pressure and no SLO break over the sweep: {base['name']} is compute-bound"
