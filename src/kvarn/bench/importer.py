"""Read ``vllm bench serve`` result JSON (``--save-result``; one object per file, or JSON lines with
``--append-result``) into kvarn's result shape, so existing runs get the same report and verdict.

Each record is one load level: ``concurrency`` = ``max_concurrency`` (None when unset), and
``request_rate`` = ``request_rate`` when finite. Its metric keys (``p99_ttft_ms``, ``output_throughput``,
...) are vLLM's own, so they are copied as they are. Records are grouped into arms by
``ARM=FILE`` on the command line, else by the record's ``label``, else the file name's stem.
The kv-cache dtype of an arm is guessed from its name (``bf16``/``auto``, ``fp8``, ``kvarn_*``).
vLLM's files carry no preemption counts, KV usage or capacity: those stay None.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from kvarn.bench import metrics as M
from kvarn.bench.schema import LEVEL_SCHEMA
from kvarn.bench.sweep import SCHEMA_ID


def read_records(path: Path) -> list[dict]:
    text = Path(path).read_text()
    try:
        obj = json.loads(text)
        return obj if isinstance(obj, list) else [obj]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def _dtype_of(name: str) -> str:
    low = name.lower()
    for key in ("kvarn_", "fp8", "int8_per_token_head", "int4_per_token_head", "turboquant_"):
        if key in low:
            i = low.index(key)
            return low[i:].split("-")[0].split(".")[0] if key == "kvarn_" else key.rstrip("_")
    return "auto"


def to_level(rec: dict, slo: M.SLO) -> dict:
    rate = rec.get("request_rate")
    try:
        rate = float(rate)
        rate = rate if math.isfinite(rate) else None
    except (TypeError, ValueError):
        rate = None
    lv = {k: v for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for k in LEVEL_SCHEMA["required"]:  # vLLM writes only the percentiles asked for; goodput may be null
        lv.setdefault(k, None)
    lv.update(concurrency=rec.get("max_concurrency"), request_rate=rate,
              num_requests=rec.get("num_prompts") or (rec.get("completed", 0) + rec.get("failed", 0)),
              num_preemptions=None, max_kv_cache_usage_perc=None)
    lv["meets_slo"] = M.meets_slo(lv, slo)
    lv["stable"] = bool((lv.get("completed") or 0) > 0 and not lv.get("failed") and lv["meets_slo"])
    return lv


def import_vllm_results(specs: list[str], slo: M.SLO | None = None, workload: str = "imported") -> dict:
    """Build a kvarn result (with verdict) from ``vllm bench serve`` files; specs are FILE or ARM=FILE."""
    from kvarn import __version__
    from kvarn.bench.verdict import decide

    slo = slo or M.SLO()
    arms: dict[str, list[dict]] = {}
    model = None
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"not a file: {p}")
        for rec in read_records(p):
            if "output_throughput" not in rec and "mean_ttft_ms" not in rec:
                raise ValueError(f"{p} does not look like a `vllm bench serve` result (no output_throughput)")
            arm = name or rec.get("label") or p.stem
            model = model or rec.get("model_id")
            arms.setdefault(arm, []).append(to_level(rec, slo))
    out_arms = []
    for name, levels in arms.items():
        levels.sort(key=lambda x: (x.get("concurrency") or 0, x.get("request_rate") or 0))
        a = {"name": name, "kv_cache_dtype": _dtype_of(name), "block_size": None, "external": True,
             "status": "ok", "error": "", "startup_s": None, "kv_capacity_tokens": None, "quality": None,
             "levels": levels, "stop_reason": "imported"}
        a["max_stable_concurrency"] = M.max_stable_concurrency(levels, slo)
        a["throughput_at_slo"] = max((x.get("output_throughput") or 0.0 for x in levels if x["stable"]), default=0.0)
        a["max_stable_request_rate"] = max((x["request_rate"] for x in levels if x["stable"] and x["request_rate"]),
                                           default=None)
        out_arms.append(a)
    if not out_arms:
        raise ValueError("nothing to import")
    base = next((a["name"] for a in out_arms if a["kv_cache_dtype"] == "auto"), out_arms[0]["name"])
    has_conc = any(lv.get("concurrency") for a in out_arms for lv in a["levels"])
    result = {"schema": SCHEMA_ID, "kvarn_version": __version__, "created": None, "model": model,
              "mode": "concurrency" if has_conc else "rate", "slo": slo.as_dict(), "baseline": base,
              "interrupted": False, "workload": {"name": workload, "description": "imported vllm bench serve runs"},
              "load_levels": [], "serve_args": [], "device": {}, "quality_set": None, "arms": out_arms,
              "imported_from": specs}
    result["verdict"] = decide(result)
    return result
