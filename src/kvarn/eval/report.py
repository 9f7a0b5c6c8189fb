"""Tables and the summary of a ``kvarn eval`` JSON result.

``markdown(result)`` renders every section present (pseudo-decode overall + by position, free run,
retrieval, vLLM); ``summary(result)`` is a small dict that ``kvarn bench`` can embed::

    {"model": ..., "context": ..., "formats": {name: {"bits_per_element", "rel_ppl", "kl_mean",
     "top1", "exact_match", "retrieval_accuracy"}}}

``check_result(result)`` validates the JSON structure (CI uses it) and raises ValueError listing
what is missing.
"""

from __future__ import annotations

import math

SCHEMA = "kvarn.eval/1"


def _f(x, spec=".4f", pct=False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:+.2f}%" if pct else format(x, spec)


def pseudo_decode_table(pd: dict) -> str:
    lines = [
        "| format | bits/elem | ppl | rel. ppl vs bf16 | mean KL | p99 KL | top-1 agree |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in pd["formats"].items():
        o = row["overall"]
        lines.append(f"| {name} | {row['bits_per_element']:.3f} | {o['ppl']:.3f} | {_f(o['rel_ppl'], pct=True)} | "
                     f"{_f(o['kl_mean'])} | {_f(o['kl_p99'])} | {_f(o['top1'], '.4f')} |")
    return "\n".join(lines)


def position_table(pd: dict, metric: str = "kl_mean") -> str:
    """One row per format, one column per position bucket, cells = ``metric``."""
    heads = [f"{lo}-{hi}" for lo, hi in pd["buckets"]]
    lines = [f"| {metric} by position | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for name, row in pd["formats"].items():
        cells = [_f(b[metric], pct=(metric == "rel_ppl")) if metric != "top1" else _f(b[metric], ".3f")
                 for b in row["buckets"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def free_run_table(fr: dict) -> str:
    lines = [
        "| format | bits/elem | prompts | exact match | first div. p25 | median | p75 | mean |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in fr["formats"].items():
        lines.append(f"| {name} | {row['bits_per_element']:.3f} | {row['prompts']} | {row['exact_match']:.2f} | "
                     f"{row['first_div_p25']} | {row['first_div_median']} | {row['first_div_p75']} | "
                     f"{row['first_div_mean']:.1f} |")
    return "\n".join(lines)


def retrieval_table(rt: dict) -> str:
    depths = [str(d) for d in rt["depths"]]
    lines = ["| format | bits/elem | accuracy | " + " | ".join(f"depth {d}" for d in depths) + " | same answer as bf16 |",
             "|---|---:|---:|" + "---:|" * len(depths) + "---:|"]
    for name, row in rt["formats"].items():
        same = row.get("same_answer_as_bf16")
        lines.append(f"| {name} | {row['bits_per_element']:.3f} | {row['accuracy']:.2f} | "
                     + " | ".join(f"{row['per_depth'][d]:.2f}" for d in depths)
                     + f" | {'-' if same is None else f'{same:.2f}'} |")
    return "\n".join(lines)


def vllm_table(vr: dict) -> str:
    if vr.get("skipped"):
        return f"vLLM: skipped ({vr['skipped']})"
    lines = ["| kv_cache_dtype | prompts | exact match vs auto | first div. median | mean | retrieval accuracy |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in vr.get("formats", {}).items():
        fr, rt = row.get("free_run", {}), row.get("retrieval", {})
        lines.append(f"| {name} | {fr.get('prompts', '-')} | {_f(fr.get('exact_match'), '.2f')} | "
                     f"{fr.get('first_div_median', '-')} | {_f(fr.get('first_div_mean'), '.1f')} | "
                     f"{_f(rt.get('accuracy'), '.2f')} |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    m = result["model"]
    out = [f"## kvarn eval: {m['name']} (head_dim {m['head_dim']}, {m['layers']} layers, {m['kv_heads']} KV heads)",
           "", f"Command: `{result.get('command', '')}`", "", m["weights_note"], ""]
    if "pseudo_decode" in result:
        pd = result["pseudo_decode"]
        toks = sum(p["tokens"] for p in pd["passages"])
        out += [f"### Teacher-forced drift ({len(pd['passages'])} passages, {toks} tokens, prefill={pd['prefill']})", "",
                pseudo_decode_table(pd), "", position_table(pd, "kl_mean"), "", position_table(pd, "rel_ppl"), "",
                position_table(pd, "top1"), ""]
    if "free_run" in result:
        fr = result["free_run"]
        lens = sorted({p["tokens"] for p in fr["prompts"]})
        out += [f"### Free-running greedy drift ({len(fr['prompts'])} prompts of {lens[0]}-{lens[-1]} tokens, "
                f"{fr['n_new']} new tokens, prefill={fr['prefill']})", "", free_run_table(fr), ""]
    if "retrieval" in result:
        rt = result["retrieval"]
        out += [f"### Pass-key retrieval ({rt['context']} tokens, {rt['trials_per_depth']} trials per depth, "
                f"prefill={rt['prefill']})", "", retrieval_table(rt), ""]
    if "vllm" in result:
        out += ["### Through vLLM (the shipped backend)", "", vllm_table(result["vllm"]), ""]
    return "\n".join(out)


def summary(result: dict) -> dict:
    """Per-format headline numbers (see module doc)."""
    fmts: dict[str, dict] = {}

    def row(name, bits):
        return fmts.setdefault(name, {"bits_per_element": bits})

    for name, r in result.get("pseudo_decode", {}).get("formats", {}).items():
        o = r["overall"]
        row(name, r["bits_per_element"]).update(rel_ppl=o["rel_ppl"], kl_mean=o["kl_mean"], top1=o["top1"])
    for name, r in result.get("free_run", {}).get("formats", {}).items():
        row(name, r["bits_per_element"]).update(exact_match=r["exact_match"], first_div_median=r["first_div_median"])
    for name, r in result.get("retrieval", {}).get("formats", {}).items():
        row(name, r["bits_per_element"])["retrieval_accuracy"] = r["accuracy"]
    pd = result.get("pseudo_decode", {})
    return {"model": result["model"]["name"],
            "context": max((p["tokens"] for p in pd.get("passages", [])), default=None),
            "formats": fmts}


def check_result(result: dict) -> None:
    """Raise ValueError unless ``result`` has the structure ``kvarn eval`` writes."""
    problems = []
    if result.get("schema") != SCHEMA:
        problems.append(f"schema != {SCHEMA}")
    for key in ("model", "settings", "formats"):
        if key not in result:
            problems.append(f"missing {key}")
    pd = result.get("pseudo_decode")
    if pd is not None:
        for name, r in pd.get("formats", {}).items():
            o = r.get("overall", {})
            for k in ("ppl", "rel_ppl", "kl_mean", "kl_p99", "top1"):
                v = o.get(k)
                if not isinstance(v, (int, float)) or math.isnan(v):
                    problems.append(f"pseudo_decode.{name}.{k} = {v!r}")
            if len(r.get("buckets", [])) != len(pd.get("buckets", [])):
                problems.append(f"pseudo_decode.{name}: bucket count")
        if "bf16" not in pd.get("formats", {}):
            problems.append("pseudo_decode: no bf16 reference row")
    for sec, key in (("free_run", "exact_match"), ("retrieval", "accuracy")):
        for name, r in result.get(sec, {}).get("formats", {}).items():
            if not isinstance(r.get(key), (int, float)):
                problems.append(f"{sec}.{name}.{key} missing")
    if problems:
        raise ValueError("invalid kvarn eval result: " + "; ".join(problems))
