"""``kvarn plan --calibrate RESULT.json``: compare the planner's predictions with a ``kvarn bench`` result.

Reads (tolerating missing keys) ``arms[].name``, ``arms[].kv_cache_dtype``, ``arms[].kv_capacity_tokens``
and ``arms[].levels[].{concurrency, request_rate, output_throughput, p95_ttft_ms, mean_tpot_ms,
total_input_tokens, total_output_tokens, completed}``, plus ``workload`` for the request lengths.
Each level is re-predicted as a closed loop at its concurrency (or an open loop at its request rate)
with the level's mean prompt/output lengths; the error is ``predicted / measured - 1``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from kvarn.plan.formats import get_format
from kvarn.plan.gpus import GPU, vllm_batch_defaults
from kvarn.plan.model import ModelShape
from kvarn.plan.predict import predict_format
from kvarn.plan.workloads import Workload, build_workload

_ARM_ALIASES = {"auto": "bf16", "baseline": "bf16", "fp16": "fp16", "bfloat16": "bf16"}


def _arm_format(arm: dict) -> str | None:
    for key in ("kv_cache_dtype", "name"):
        v = arm.get(key)
        if isinstance(v, str) and v:
            v = _ARM_ALIASES.get(v.lower(), v.lower())
            try:
                get_format(v, 128)
                return v
            except ValueError:
                continue
    return None


def _level_lengths(level: dict, wl_default: Workload | None) -> tuple[float, float] | None:
    done = level.get("completed") or level.get("num_requests")
    if done and level.get("total_input_tokens") and level.get("total_output_tokens"):
        return level["total_input_tokens"] / done, level["total_output_tokens"] / done
    if wl_default is not None:
        return wl_default.mean_prompt, wl_default.mean_output
    return None


def _err(pred, meas) -> float | None:
    if pred is None or meas in (None, 0) or not isinstance(meas, (int, float)):
        return None
    if isinstance(pred, float) and not math.isfinite(pred):
        return None
    return round(pred / meas - 1.0, 4)


def calibrate(
    result_path: str | Path,
    gpu: GPU,
    shape: ModelShape,
    tp: int = 1,
    util: float = 0.9,
    workload: str | None = None,
    max_num_batched_tokens: int | None = None,
    max_num_seqs: int | None = None,
    mode: str = "serve",
    kvarn_attn_eff: float | None = None,
    kvarn_flush_us: float | None = None,
) -> dict:
    """Per-arm, per-level prediction errors and their mean absolute value."""
    path = Path(result_path)
    try:
        res = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read bench result {path}: {e}") from e
    if not isinstance(res, dict):
        raise ValueError(f"{path}: not a kvarn bench result (a JSON object with 'arms', from `kvarn bench`), got a "
                         f"JSON {type(res).__name__}; benchmarks/gpu/bench_vllm_bursts.py output is not one")
    arms = res.get("arms") or []
    if not arms:
        raise ValueError(f"{path}: no 'arms' in the result")
    wl_info = res.get("workload") or {}
    spec = workload or wl_info.get("name")
    wl_default = None
    if spec:
        try:
            wl_default = build_workload(spec)
        except ValueError:
            wl_default = None
    mbt_d, seqs_d = vllm_batch_defaults(gpu, mode)
    mbt, seqs = max_num_batched_tokens or mbt_d, max_num_seqs or seqs_d
    rows, skipped = [], []
    for arm in arms:
        fname = _arm_format(arm)
        if fname is None:
            skipped.append(f"{arm.get('name')}: unknown KV format")
            continue
        fmt = get_format(fname, shape.head_dim, kvarn_attn_eff, kvarn_flush_us, shape.q_heads_per_kv)
        levels = [lv for lv in (arm.get("levels") or []) if lv.get("output_throughput")]
        cap_meas = arm.get("kv_capacity_tokens")
        cap_pred = None
        for lv in levels or [{}]:
            lengths = _level_lengths(lv, wl_default) if lv else None
            if lengths is None:
                if lv:
                    skipped.append(f"{arm.get('name')} level {lv.get('concurrency')}: no request lengths")
                continue
            p, o = lengths
            conc, rate = lv.get("concurrency"), lv.get("request_rate")
            wl = Workload(f"{spec or 'bench'}@{conc or rate}", [(max(0, round(p)), max(1, round(o)))],
                          concurrency=int(conc) if conc else None,
                          request_rate=float(rate) if rate and not conc else None,
                          prefix_hit_frac=wl_default.prefix_hit_frac if wl_default else 0.0)
            # the server's pool was sized by its max_num_seqs, uncapped (kvarn.vllm_plugin)
            pred, cap = predict_format(gpu, shape, fmt, wl, tp, util, mbt, seqs, pool_seqs=seqs, cap_pool=False)
            cap_pred = cap.capacity_tokens
            rows.append({
                "arm": arm.get("name"), "format": fname, "concurrency": conc, "request_rate": rate,
                "measured_output_tok_s": lv.get("output_throughput"), "predicted_output_tok_s": pred.output_tok_s,
                "throughput_error": _err(pred.output_tok_s, lv.get("output_throughput")),
                "measured_p95_ttft_ms": lv.get("p95_ttft_ms"), "predicted_ttft_ms": pred.ttft_ms,
                "ttft_error": _err(pred.ttft_ms, lv.get("p95_ttft_ms")),
                "measured_mean_tpot_ms": lv.get("mean_tpot_ms"), "predicted_tpot_ms": pred.tpot_ms,
                "tpot_error": _err(pred.tpot_ms, lv.get("mean_tpot_ms")),
                "measured_capacity_tokens": cap_meas, "predicted_capacity_tokens": cap_pred,
                "capacity_error": _err(cap_pred, cap_meas),
            })
        if not levels and cap_meas:
            skipped.append(f"{arm.get('name')}: capacity only")

    def mape(key: str) -> float | None:
        v = [abs(r[key]) for r in rows if r.get(key) is not None]
        return round(sum(v) / len(v), 4) if v else None

    return {
        "result": str(path), "workload": spec, "rows": rows, "skipped": skipped,
        "mean_abs_error": {k: mape(k) for k in ("throughput_error", "tpot_error", "ttft_error", "capacity_error")},
    }


def render_calibration(cal: dict) -> str:
    def pct(x):
        return "-" if x is None else f"{x:+.1%}"

    lines = [f"calibration against {cal['result']} (workload {cal['workload']})",
             f"{'arm':<22}{'conc':>6}{'meas tok/s':>12}{'pred tok/s':>12}{'err':>8}{'TPOT err':>10}"
             f"{'TTFT err':>10}{'cap err':>9}"]
    for r in cal["rows"]:
        lines.append(f"{str(r['arm'])[:21]:<22}{str(r['concurrency'] or r['request_rate']):>6}"
                     f"{r['measured_output_tok_s'] or 0:>12,.1f}{r['predicted_output_tok_s'] or 0:>12,.1f}"
                     f"{pct(r['throughput_error']):>8}{pct(r['tpot_error']):>10}{pct(r['ttft_error']):>10}"
                     f"{pct(r['capacity_error']):>9}")
    m = cal["mean_abs_error"]
    lines.append("mean |error|: " + ", ".join(f"{k.replace('_error', '')} {pct(v) if v is not None else '-'}"
                                             for k, v in m.items()))
    lines += [f"skipped: {s}" for s in cal["skipped"]]
    return "\n".join(lines)
