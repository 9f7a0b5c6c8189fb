"""Render a plan (the dict from :func:`kvarn.plan.advisor.make_plan`) as text, and write it as JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

from kvarn.config import split_sink_suffix


def clean(obj):
    """Replace NaN/inf by None so the document is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def write_json(plan: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(clean(plan), indent=2) + "\n")


def _num(x, fmt: str = "{:,.0f}", none: str = "-") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return fmt.format(x)


def _pool_note(sink: str | None) -> str:
    """What a kvarn format's pool holds and, for a sink suffix, the KVARN_SINK setting that serves it."""
    if sink is None:
        return "fp16 sink/tail pool"
    drift = "more drift than the fp16 sink" if sink == "quantized" else "drift near the fp16 sink's"
    return f"serve with KVARN_SINK={sink} ({drift}: docs/eval.md); fp16 tail pool"


def render_text(plan: dict) -> str:
    i, w, d, m = plan["inputs"], plan["workload"], plan["decision"], plan["memory"]
    g, s = i["gpu"], i["model"]
    lines = [
        f"kvarn plan: {s['name']} ({s['params_total'] / 1e9:.2f} B params, {s['num_layers']} layers, "
        f"{s['num_kv_heads']} KV heads x {s['head_dim']}) on {i['tp']} x {g['name']} "
        f"({g['memory_gib']:.1f} GiB, {g['hbm_tbs']} TB/s), util {i['gpu_mem_util']}",
        f"workload {w['name']}: {w['description'] or ''}",
        f"  {w['num_requests']} requests, mean prompt {w['mean_prompt_tokens']:.0f}, mean output "
        f"{w['mean_output_tokens']:.0f}, p95 context {w['p95_context_tokens']}, "
        + ("all at once" if w["burst"] else
           f"{w['request_rate']} req/s" if w["request_rate"] else f"{w['concurrency']} concurrent"),
        f"  per GPU: weights {m['weights_gib_per_gpu']:.2f} GiB, KV memory {m['kv_memory_gib_per_gpu']:.2f} GiB "
        f"(max_num_batched_tokens {i['max_num_batched_tokens']}, max_num_seqs {i['max_num_seqs']})",
        "",
        f"{'format':<22}{'B/tok/hd':>9}{'capacity':>11}{'x bf16':>7}{'seqs':>6}{'waves':>7}{'out tok/s':>11}"
        f"{'x bf16':>7}{'TPOT ms':>9}{'TTFT s':>8}{'GPUs':>6}{'$/Mtok':>8}",
    ]
    for f in plan["formats"]:
        if not f["supported"]:
            lines.append(f"{f['format']:<22}  not supported: {f['note']}")
            continue
        lines.append(
            f"{f['format']:<22}{_num(f['bytes_per_token_head'], '{:.0f}'):>9}{_num(f['capacity_tokens']):>11}"
            f"{_num(f['capacity_x_bf16'], '{:.2f}'):>7}{f['resident_seqs']:>6}{_num(f['waves'], '{:.2f}'):>7}"
            f"{_num(f['output_tok_s']) + ('*' if f['saturated'] and w['request_rate'] else ''):>11}"
            f"{_num(f['output_tok_s_x_bf16'], '{:.2f}'):>7}"
            f"{_num(f['tpot_ms'], '{:.1f}'):>9}{_num((f['ttft_ms'] or 0) / 1e3, '{:.2f}'):>8}"
            f"{_num(f['gpus_for_target']):>6}{_num(f['cost_per_mtok_usd'], '{:.3f}'):>8}"
        )
    notes = [f"  {f['format']}: " + _pool_note(split_sink_suffix(f["format"])[1])
             + f" {f['pool_gib']:.1f} GiB sized for --max-num-seqs {f['max_num_seqs']} (pass it to vLLM: the pool "
             "grows with it)" + (f"; {f['note']}" if f["note"] else "")
             for f in plan["formats"] if f["supported"] and f["family"] == "kvarn"]
    notes += [f"  {f['format']}: {f['note']}" for f in plan["formats"]
              if f["supported"] and f["note"] and f["family"] != "kvarn"]
    if notes:
        lines += ["", "notes:", *notes]
    if w["request_rate"]:
        lines += ["", "* saturated: cannot serve the offered rate (queue grows without bound)"]
    lines += [
        "",
        f"GPUs = GPUs to hold {i['target_sessions']} sessions at {i['target_context']} tokens each; "
        f"$/Mtok at ${i['gpu_price_per_hour']}/GPU-hour.",
        "",
        f"branch: {d['branch'].upper()} - {d['why']}",
    ]
    for b in d["quantization_buys"]:
        if b["format"] in (d["try_first"], *d["then"]):
            lines.append(
                f"  {b['format']}: {b['capacity_x_bf16']:.2f}x capacity, {b['extra_resident_seqs']:+d} resident "
                f"sequences, {b['context_per_seq_at_target']:,} tokens/sequence at the target concurrency, "
                f"{_num(b['throughput_x_bf16'], '{:.2f}')}x throughput ({b['verdict']})")
    be = d.get("kvarn_k4v2_g128_attn_eff_to_match")
    if be:
        from kvarn.plan.formats import KVARN_FLUSH_S_PER_TILE, KVARN_STEP_OVERHEAD_S, get_format

        i_eff, i_fl = plan["inputs"].get("kvarn_attn_eff"), plan["inputs"].get("kvarn_flush_us")
        m = plan["inputs"]["model"]
        prior = get_format("kvarn_k4v2_g128", m["head_dim"], q_heads_per_kv=m["q_heads_per_kv"]).attn_eff
        lines.append(
            f"kvarn_k4v2_g128 decode-kernel bandwidth efficiency needed (assumed {i_eff or prior}, flush "
            f"{i_fl if i_fl is not None else KVARN_FLUSH_S_PER_TILE * 1e6:g} us/tile, builder "
            f"{KVARN_STEP_OVERHEAD_S * 1e3:g} ms/step): " + ", ".join(
                f"to match {k} {'>= ' + format(v, '.2f') if v is not None else 'out of reach at this flush/step cost'}"
                for k, v in be.items()))
    lines.append(f"try first: {d['try_first']}" + (f"  (then: {', '.join(d['then'])})" if d["then"] else ""))
    lines += [f"warning: {x}" for x in plan.get("warnings", [])]
    return "\n".join(lines)
