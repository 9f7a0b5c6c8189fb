"""``kvarn bench``: A/B serving benchmark of KV-cache formats through vLLM, with a verdict.

    kvarn bench                                   # CPU: bf16 vs kvarn_k4v2_g128 on the default model
    kvarn bench --model PATH --arms auto,fp8,kvarn_k4v2_g128 --workload long-context-agent \
                --slo ttft_ms=2000,tpot_ms=80
    kvarn bench --arms bf16=http://127.0.0.1:8000,kvarn_k4v2_g128=http://127.0.0.1:8001   # running servers
    kvarn bench report --import a.json b.json     # vllm bench serve results -> kvarn report + verdict
    kvarn bench report RESULT.json                # re-render a kvarn result
    kvarn bench schema                            # the result JSON Schema
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path

CPU_DEFAULTS = dict(concurrency="1,2,4,8", scale=0.25, workload="burst-decode", max_model_len=512, max_num_seqs=8,
                    kv_memory="20MiB", sessions_per_slot=1, min_sessions=2, quality_prompts=4, quality_tokens=16,
                    slo="ttft_ms=20000,tpot_ms=2000", serve_extra=["--enforce-eager"])
GPU_DEFAULTS = dict(concurrency="1,2,4,8,16,32,64,128,256,512", scale=1.0, workload="chat", max_model_len=8192,
                    max_num_seqs=512, kv_memory=None, sessions_per_slot=2, min_sessions=8, quality_prompts=16,
                    quality_tokens=64, slo="ttft_ms=2000,tpot_ms=80", serve_extra=[])
TINY = dict(concurrency="1,4", scale=0.125, max_model_len=256, max_num_seqs=4, quality_prompts=2,
            quality_tokens=8, sessions_per_slot=1, min_sessions=1)


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?i?B?)\s*", text, re.I)
    if not m:
        raise ValueError(f"bad size {text!r}; use e.g. 512MiB, 2GiB, 1000000")
    unit = m.group(2).upper().rstrip("B").rstrip("I")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(unit or " "))


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="A/B serving benchmark of KV formats (bf16 vs kvarn) with a verdict",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder or name (default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--arms", default="bf16,kvarn_k4v2_g128",
                   help="comma list: bf16|auto, fp8, kvarn_<preset>; NAME=URL benchmarks a running server")
    p.add_argument("--base-url", help="comma list of running server URLs, one per arm in --arms order")
    p.add_argument("--workload", help="comma list of chat, long-context-agent, rag, burst-decode, long-prompt, file:PATH")
    p.add_argument("--slo", help="latency SLO, e.g. ttft_ms=2000,tpot_ms=80[,e2el_ms=...]")
    p.add_argument("--slo-percentile", type=int, default=95, help="percentile the SLO applies to (default 95)")
    p.add_argument("--concurrency", help="comma list of concurrency levels (default 1,2,4,...)")
    p.add_argument("--request-rate", help="comma list of Poisson request rates (req/s): rate mode")
    p.add_argument("--full-sweep", action="store_true", help="keep going after the first unstable level")
    p.add_argument("--sessions-per-slot", type=int, help="sessions per concurrency slot at each level")
    p.add_argument("--min-sessions", type=int, help="minimum sessions per level")
    p.add_argument("--num-sessions", type=int, help="fixed number of sessions per level (overrides the two above)")
    p.add_argument("--scale", type=float, help="multiply every workload length (prompt and output tokens)")
    p.add_argument("--turns", type=int, default=4, help="turns per long-context-agent session")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--max-num-seqs", type=int)
    p.add_argument("--kv-memory", help="KV cache memory per server (--kv-cache-memory-bytes), e.g. 64MiB")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--load-format", help="e.g. dummy (random weights, for shape-only GPU runs)")
    p.add_argument("--serve-args", default="", help="extra flags for every `vllm serve`, one string")
    p.add_argument("--server-cmd", help="server launcher (default: python -m vllm.entrypoints.openai.api_server)")
    p.add_argument("--startup-timeout", type=float, default=900.0)
    p.add_argument("--quality-prompts", type=int, help="prompts in the quality-drift set (0 = skip)")
    p.add_argument("--quality-tokens", type=int, help="greedy tokens per quality prompt")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="picks the default sizes")
    p.add_argument("--tiny", action="store_true", help="CI sizes: two levels, very short requests")
    p.add_argument("--out", default="kvarn-bench-out", help="output folder (JSON, Markdown, HTML, server logs)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_cli)
    sub = p.add_subparsers(dest="bench_command", metavar="{report,dummy-model,schema}")
    r = sub.add_parser("report", help="render reports from kvarn results or `vllm bench serve` JSON (--import)")
    r.add_argument("results", nargs="*", help="kvarn result JSON files to re-render")
    r.add_argument("--import", dest="imports", nargs="+", default=[], metavar="[ARM=]FILE",
                   help="vllm bench serve result files; ARM= names the arm (default: label or file stem)")
    r.add_argument("--slo", default="", help="SLO for imported runs, e.g. ttft_ms=2000,tpot_ms=80")
    r.add_argument("--slo-percentile", type=int, default=95)
    r.add_argument("--workload", default="imported", help="workload name for imported runs")
    r.add_argument("--out", default="kvarn-bench-out")
    r.set_defaults(func=run_report)
    dm = sub.add_parser("dummy-model", help="a dummy-weight model folder of a shape with a real tokenizer")
    dm.add_argument("--shape", required=True, help="folder (or file) with the shape's config.json")
    dm.add_argument("--out", required=True, help="folder to write")
    dm.add_argument("--tokenizer", help="tokenizer folder (default: the bundled SmolLM2-135M-Instruct)")
    dm.set_defaults(func=run_dummy_model)
    s = sub.add_parser("schema", help="print the result JSON Schema")
    s.set_defaults(func=run_schema)


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def build_config(args):
    """argparse namespace -> BenchConfig (device defaults, then --tiny, then explicit flags)."""
    from kvarn.bench.metrics import SLO
    from kvarn.bench.server import DEFAULT_SERVER_CMD, parse_arms
    from kvarn.bench.sweep import BenchConfig
    from kvarn.bench.workloads import PRESET_NAMES, load_jsonl, needed_model_len

    gpu = args.device == "gpu" or (args.device == "auto" and _has_cuda())
    d = dict(GPU_DEFAULTS if gpu else CPU_DEFAULTS)
    if args.tiny:
        d.update(TINY)
    pick = lambda name, key=None: getattr(args, name) if getattr(args, name) is not None else d[key or name]  # noqa
    arms = parse_arms(args.arms)
    if args.base_url:
        urls = [u.strip() for u in args.base_url.split(",") if u.strip()]
        if len(urls) != len(arms):
            raise ValueError(f"--base-url gives {len(urls)} URL(s) for {len(arms)} arm(s); give one per arm")
        arms = parse_arms(",".join(f"{a.name}={u}" for a, u in zip(arms, urls)))
    model = args.model
    if not model and not all(a.base_url for a in arms):
        try:
            from kvarn.assets import default_model_dir  # type: ignore
        except ImportError as e:
            raise ValueError("no --model given and kvarn.assets (the bundled default model) is not available: "
                             f"{e}") from e
        model = str(default_model_dir())
    workloads = [w.strip() for w in (args.workload or d["workload"]).split(",") if w.strip()]
    for w in workloads:  # fail before any server starts
        if w.startswith("file:"):
            load_jsonl(Path(w[5:]))
        elif w not in PRESET_NAMES:
            raise ValueError(f"unknown workload {w!r}; valid: {', '.join(PRESET_NAMES)}, file:PATH")
    max_len = args.max_model_len or max([d["max_model_len"]] + [
        needed_model_len(w, pick("scale"), args.turns) for w in workloads])
    serve = ["--dtype", args.dtype, "--max-model-len", str(max_len),
             "--max-num-seqs", str(pick("max_num_seqs")), "--seed", str(args.seed)]
    kv_memory = pick("kv_memory")
    env = None
    if kv_memory:
        kv_bytes = parse_bytes(kv_memory)
        per_token = bf16_bytes_per_token(model) if args.kv_memory is None else None
        if per_token:  # the small default must still hold one max-length request (+2 blocks) in bf16
            kv_bytes = max(kv_bytes, (max_len + 256) * per_token)
        serve += ["--kv-cache-memory-bytes", str(kv_bytes)]
        env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}  # it would override
    if args.load_format:
        serve += ["--load-format", args.load_format]
    serve += d["serve_extra"] + shlex.split(args.serve_args or "")
    rates = [float(x) for x in args.request_rate.split(",")] if args.request_rate else []
    return BenchConfig(
        model=model or "", arms=arms, workloads=workloads,
        slo=SLO.parse(args.slo if args.slo is not None else d["slo"], args.slo_percentile),
        concurrency=[int(x) for x in pick("concurrency").split(",")], request_rates=rates,
        sessions_per_slot=pick("sessions_per_slot"), min_sessions=pick("min_sessions"), scale=pick("scale"),
        num_sessions=args.num_sessions,
        # random weights hit EOS at arbitrary points (often at once): keep every output length as planned
        extra_body={"ignore_eos": True} if args.load_format == "dummy" else None,
        turns=args.turns, seed=args.seed, full_sweep=args.full_sweep, serve_args=serve,
        server_cmd=args.server_cmd or DEFAULT_SERVER_CMD, server_env=env, startup_timeout_s=args.startup_timeout,
        quality_prompts=pick("quality_prompts"), quality_max_tokens=pick("quality_tokens", "quality_tokens"),
        out_dir=Path(args.out), progress=not args.no_progress)


def bf16_bytes_per_token(model: str | None) -> int | None:
    """bf16 KV bytes per token of a local model folder (layers x KV heads x head_dim x 2 x 2), or None."""
    try:
        cfg = json.loads((Path(model) / "config.json").read_text())
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        kv_heads = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
        return int(cfg["num_hidden_layers"]) * int(kv_heads) * int(head_dim) * 4
    except (OSError, KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def write_outputs(result: dict, out_dir: Path, stem: str) -> dict[str, Path]:
    """Write <stem>.json, <stem>.md and <stem>.html; returns the paths."""
    from kvarn.bench.report_html import render_html
    from kvarn.bench.report_md import render_markdown

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "html": out_dir / f"{stem}.html"}
    paths["json"].write_text(json.dumps(result, indent=2, default=str) + "\n")
    paths["md"].write_text(render_markdown(result))
    paths["html"].write_text(render_html(result))
    return paths


def _stem(result: dict) -> str:
    name = (result.get("workload") or {}).get("name", "result")
    return "bench_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _print_done(result: dict, paths: dict[str, Path]) -> None:
    print(f"\n== {(result.get('workload') or {}).get('name')} ==")
    for k, pth in paths.items():
        print(f"  {k:>4}: {pth}")
    print("  " + (result.get("verdict") or {}).get("headline", "no verdict"))


def run_cli(args) -> int:
    if getattr(args, "bench_command", None):
        return 2
    from kvarn.bench.sweep import run_bench

    try:
        cfg = build_config(args)
    except ValueError as e:
        print(f"kvarn bench: error: {e}", file=sys.stderr)
        return 2
    print(f"kvarn bench: model {cfg.model or '(running servers)'}; arms {', '.join(a.name for a in cfg.arms)}; "
          f"workloads {', '.join(cfg.workloads)}; levels {cfg.request_rates or cfg.concurrency}; out {cfg.out_dir}")
    from kvarn.bench.sweep import _kv_budget

    if _kv_budget(cfg.serve_args):
        print(f"KV cache limited to {_kv_budget(cfg.serve_args) / 2**20:g} MiB per server (--kv-memory; the CPU "
              "default is small so that memory binds for bf16 within a few sequences)")
    results = run_bench(cfg)
    for res in results:
        _print_done(res, write_outputs(res, cfg.out_dir, _stem(res)))
    if any(r.get("interrupted") for r in results):
        return 130
    return 0 if all(a.get("status") == "ok" for r in results for a in r["arms"]) else 1


def run_report(args) -> int:
    from kvarn.bench.importer import import_vllm_results
    from kvarn.bench.metrics import SLO

    out = Path(args.out)
    try:
        from kvarn.bench.verdict import decide

        results = [json.loads(Path(f).read_text()) for f in args.results]
        for res in results:  # re-judge with this version's rules
            res["verdict"] = decide(res)
        if args.imports:
            results.append(import_vllm_results(args.imports, SLO.parse(args.slo, args.slo_percentile), args.workload))
    except (ValueError, OSError) as e:
        print(f"kvarn bench report: error: {e}", file=sys.stderr)
        return 2
    if not results:
        print("kvarn bench report: give result files and/or --import FILES", file=sys.stderr)
        return 2
    for res in results:
        _print_done(res, write_outputs(res, out, _stem(res)))
    return 0


def run_schema(args) -> int:
    from kvarn.bench.schema import RESULT_SCHEMA

    print(json.dumps(RESULT_SCHEMA, indent=2))
    return 0


def run_dummy_model(args) -> int:
    from kvarn.bench.dummy_model import make_dummy_model

    try:
        out = make_dummy_model(Path(args.shape), Path(args.out), Path(args.tokenizer) if args.tokenizer else None)
    except (ValueError, OSError) as e:
        print(f"kvarn bench dummy-model: error: {e}", file=sys.stderr)
        return 2
    print(f"{out} (serve with --load-format dummy)")
    return 0
