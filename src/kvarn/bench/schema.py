"""JSON Schema (draft 2020-12) of a ``kvarn bench`` result file (``schema: "kvarn-bench/1"``).

Per-level records use ``vllm bench serve``'s key names. ``kvarn bench schema`` prints it; the
plan tool's ``--calibrate`` reads ``arms[].name``, ``arms[].kv_capacity_tokens`` and
``arms[].levels[].{concurrency, output_throughput, p95_ttft_ms, mean_tpot_ms}``.
"""

from __future__ import annotations

_num = {"type": ["number", "null"]}
_int = {"type": ["integer", "null"]}

LEVEL_METRICS = [f"{s}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el")
                 for s in ("mean", "median", "std", "p50", "p90", "p95", "p99")]

LEVEL_SCHEMA = {
    "type": "object",
    "required": ["concurrency", "request_rate", "completed", "failed", "output_throughput", "total_token_throughput",
                 "request_throughput", "request_goodput", "num_preemptions", "max_kv_cache_usage_perc", "stable",
                 "mean_ttft_ms", "median_ttft_ms", "p95_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms",
                 "p95_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "p95_itl_ms", "p99_itl_ms", "mean_e2el_ms",
                 "p95_e2el_ms", "p99_e2el_ms"],
    "properties": {
        "concurrency": {**_int, "description": "sessions in flight (concurrency mode); null in rate mode"},
        "request_rate": {**_num, "description": "Poisson session arrival rate per s (rate mode); null otherwise"},
        "num_sessions": _int, "num_requests": _int,
        "duration": {"type": "number", "description": "wall time of the level, s"},
        "completed": {"type": "integer"}, "failed": {"type": "integer"},
        "total_input_tokens": {"type": "integer"}, "total_output_tokens": {"type": "integer"},
        "request_throughput": {"type": "number", "description": "completed requests / s"},
        "request_goodput": {**_num, "description": "requests meeting every SLO term / s"},
        "good_fraction": {"type": "number"},
        "output_throughput": {"type": "number", "description": "output tokens / s"},
        "total_token_throughput": {"type": "number", "description": "(input + output tokens) / s"},
        **{k: {**_num, "description": "ms (null only in imported files that lack it)"} for k in LEVEL_METRICS},
        "num_preemptions": {**_int, "description": "increase of vllm:num_preemptions_total during the level"},
        "max_kv_cache_usage_perc": {**_num, "description": "peak vllm:kv_cache_usage_perc (0..1)"},
        "max_num_requests_waiting": _int, "max_num_requests_running": _int,
        "meets_slo": {"type": "boolean"},
        "stable": {"type": "boolean", "description": "meets the SLO, no failure, no preemption"},
        "errors": {"type": "array", "items": {"type": "string"}},
    },
}

QUALITY_SCHEMA = {
    "type": ["object", "null"],
    "properties": {k: _num for k in ("exact_match_rate", "mean_first_divergence", "min_first_divergence",
                                      "token_agreement", "mean_logprob_diff", "mean_abs_logprob_diff")},
}

ARM_SCHEMA = {
    "type": "object",
    "required": ["name", "kv_cache_dtype", "status", "kv_capacity_tokens", "max_stable_concurrency",
                 "throughput_at_slo", "levels"],
    "properties": {
        "name": {"type": "string"},
        "kv_cache_dtype": {"type": "string"},
        "block_size": _int,
        "external": {"type": "boolean", "description": "served by --base-url (not started by kvarn)"},
        "status": {"enum": ["ok", "failed", "interrupted", "pending", "running"]},
        "error": {"type": "string"},
        "startup_s": _num,
        "server_log": {"type": ["string", "null"]},
        "kv_capacity_tokens": {**_int, "description": "from the server log line 'KV cache size: N tokens'"},
        "side_memory_bytes": {**_int, "description": "memory outside the KV budget the format reports "
                              "(kvarn's fp16 sink/tail pool, 'pool_bytes=N' in the server log)"},
        "max_stable_concurrency": {"type": "integer"},
        "max_stable_request_rate": _num,
        "throughput_at_slo": {"type": "number", "description": "best output tok/s among stable levels"},
        "stop_reason": {"type": "string"},
        "quality": QUALITY_SCHEMA,
        "levels": {"type": "array", "items": LEVEL_SCHEMA},
    },
}

RESULT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:kvarn:bench-result:1",
    "title": "kvarn bench result",
    "type": "object",
    "required": ["schema", "model", "mode", "slo", "baseline", "workload", "arms", "verdict"],
    "properties": {
        "schema": {"const": "kvarn-bench/1"},
        "kvarn_version": {"type": "string"},
        "created": {"type": ["string", "null"]},
        "model": {"type": ["string", "null"]},
        "mode": {"enum": ["concurrency", "rate"]},
        "slo": {"type": "object", "properties": {"ttft_ms": _num, "tpot_ms": _num, "e2el_ms": _num,
                                                  "percentile": {"type": "integer"}}},
        "baseline": {"type": "string"},
        "interrupted": {"type": "boolean"},
        "kv_memory_bytes": {**_int, "description": "--kv-cache-memory-bytes given to every server, if any"},
        "workload": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
        "arms": {"type": "array", "minItems": 1, "items": ARM_SCHEMA},
        "verdict": {
            "type": "object",
            "required": ["recommendation", "headline", "binding_resource"],
            "properties": {
                "recommendation": {"enum": ["ship", "don't ship", "ship with caveat", "n/a"]},
                "headline": {"type": "string"},
                "binding_resource": {"enum": ["kv_memory", "compute", "latency", "unknown"]},
                "memory_pressure": {"type": ["boolean", "null"]},
                "reasons": {"type": "array", "items": {"type": "string"}},
                "numbers": {"type": "object"},
            },
        },
    },
}
