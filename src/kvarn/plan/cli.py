"""``kvarn plan``: predict, before any benchmark, whether a deployment is KV-memory-bound and what
quantization buys. Registered by :func:`register` into the ``kvarn`` console script."""

from __future__ import annotations

import argparse
import json
import sys

from kvarn.plan.advisor import make_plan
from kvarn.plan.calibrate import calibrate, render_calibration
from kvarn.plan.formats import all_format_names
from kvarn.plan.gpus import get_gpu, gpu_names
from kvarn.plan.model import builtin_model_names, load_model
from kvarn.plan.report import clean, render_text, write_json
from kvarn.plan.workloads import PRESET_NAMES, build_workload

EPILOG = """examples:
  kvarn plan --model qwen3-8b --gpu h200 --workload burst-decode
  kvarn plan --model /path/to/hf_folder --gpu h100 --tp 2 --workload chat --json plan.json
  kvarn plan --model qwen3-8b --gpu h200 --workload burst:768:1024:1024 --mode offline
  kvarn plan --model qwen3-8b --gpu h200 --calibrate bench_result.json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="qwen3-8b",
                   help=f"HF folder, config.json, or a built-in shape ({', '.join(builtin_model_names())})")
    p.add_argument("--gpu", default="h200", help=f"one of {', '.join(gpu_names())}, or custom")
    p.add_argument("--gpu-mem-gib", type=float, help="override/define GPU memory (GiB as the driver reports)")
    p.add_argument("--gpu-bw-tbs", type=float, help="override/define HBM bandwidth, TB/s")
    p.add_argument("--gpu-tflops", type=float, help="override/define dense bf16 TFLOP/s")
    p.add_argument("--gpu-link-gbs", type=float, help="override GPU-GPU link bandwidth per direction, GB/s")
    p.add_argument("--gpu-price", type=float, help="USD per GPU-hour (default: the GPU table's)")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size (GPUs per replica)")
    p.add_argument("--gpu-mem-util", type=float, default=0.9, help="vLLM --gpu-memory-utilization")
    p.add_argument("--workload",
                   help=f"{', '.join(PRESET_NAMES)}, burst:N:PROMPT:OUTPUT, or file:PATH (JSONL); default chat "
                        "(with --calibrate: the result's workload)")
    p.add_argument("--concurrency", type=int, help="concurrent users (overrides the preset's)")
    p.add_argument("--request-rate", type=float, help="open-loop arrival rate, requests/s")
    p.add_argument("--max-model-len", type=int, help="vLLM --max-model-len (warns when requests exceed it)")
    p.add_argument("--max-num-seqs", type=int, help="vLLM --max-num-seqs (default: vLLM's for this GPU)")
    p.add_argument("--max-num-batched-tokens", type=int, help="vLLM --max-num-batched-tokens (default: vLLM's)")
    p.add_argument("--mode", choices=("serve", "offline"), default="serve",
                   help="vllm serve or the offline LLM class (they differ in default batch sizes)")
    p.add_argument("--formats", help=f"comma list (default: all of {', '.join(all_format_names())})")
    p.add_argument("--target-sessions", type=int, help="sessions to hold for the GPU count (default: concurrency)")
    p.add_argument("--target-context", type=int, help="tokens per session for the GPU count (default: mean P+O)")
    p.add_argument("--kvarn-attn-eff", type=float,
                   help="kvarn decode kernel: fraction of HBM bandwidth reached (default 0.20, upstream-like)")
    p.add_argument("--kvarn-flush-us", type=float,
                   help="kvarn flush cost per (block, KV head, layer) tile in us (default 10, upstream-like)")
    p.add_argument("--json", metavar="OUT", help="also write the plan as JSON ('-' = stdout only JSON)")
    p.add_argument("--calibrate", metavar="RESULT", help="compare predictions with a kvarn bench result JSON")


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "plan", help="predict KV capacity, throughput and cost per KV format before benchmarking",
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    try:
        gpu = get_gpu(args.gpu, args.gpu_mem_gib, args.gpu_bw_tbs, args.gpu_tflops, args.gpu_link_gbs, args.gpu_price)
        shape = load_model(args.model)
        if not 0.0 < args.gpu_mem_util <= 1.0:
            raise ValueError(f"--gpu-mem-util must be in (0, 1], got {args.gpu_mem_util}")
        if args.calibrate:
            cal = calibrate(args.calibrate, gpu, shape, args.tp, args.gpu_mem_util,
                            workload=args.workload,
                            max_num_batched_tokens=args.max_num_batched_tokens,
                            max_num_seqs=args.max_num_seqs, mode=args.mode,
                            kvarn_attn_eff=args.kvarn_attn_eff, kvarn_flush_us=args.kvarn_flush_us)
            if args.json == "-":
                print(json.dumps(clean(cal), indent=2))
            else:
                print(render_calibration(cal))
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump(clean(cal), f, indent=2)
            return 0
        wl = build_workload(args.workload or "chat", args.concurrency, args.request_rate)
        formats = [f.strip() for f in args.formats.split(",") if f.strip()] if args.formats else None
        plan = make_plan(gpu, shape, wl, tp=args.tp, util=args.gpu_mem_util, formats=formats,
                         max_model_len=args.max_model_len, max_num_batched_tokens=args.max_num_batched_tokens,
                         max_num_seqs=args.max_num_seqs, mode=args.mode, gpu_price=args.gpu_price,
                         target_sessions=args.target_sessions, target_context=args.target_context,
                         kvarn_attn_eff=args.kvarn_attn_eff, kvarn_flush_us=args.kvarn_flush_us)
    except ValueError as e:
        print(f"kvarn plan: error: {e}", file=sys.stderr)
        return 2
    if args.json == "-":
        print(json.dumps(clean(plan), indent=2))
        return 0
    print(render_text(plan))
    if args.json:
        write_json(plan, args.json)
        print(f"\nwrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``kvarn plan`` alone (``python -m kvarn.plan.cli``)."""
    parser = argparse.ArgumentParser(prog="kvarn plan", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
