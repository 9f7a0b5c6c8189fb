"""``kvarn fidelity``: quantization fidelity of every kvarn preset/numerics option and the baselines.

    kvarn fidelity                      synthetic K/V (D=128, 64) + SmolLM2 K/V on Austen passages, table on stdout
    kvarn fidelity --quick              CI size (< 1 min once the model is cached)
    kvarn fidelity --json out.json      also write one object per (method, source, head_dim)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from kvarn.fidelity.run import SOURCES, all_methods, run_fidelity


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("fidelity", help="measure quantization fidelity (NMSE, attention error) vs baselines",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", metavar="PATH", help="write the result rows as a JSON list")
    p.add_argument("--quick", action="store_true", help="small run for CI")
    p.add_argument("--source", choices=(*SOURCES, "all"), default="all", help="K/V source (default all)")
    p.add_argument("--keep-sink", action="store_true",
                   help="keep the first tile fp16 (kvarn and kivi2 cache policy); default quantizes every tile")
    p.add_argument("--presets", help="comma-separated kvarn presets (default: all)")
    p.add_argument("--numerics", help="comma-separated numerics options (default: reference,improved)")
    p.add_argument("--baselines", help="comma-separated baselines, or 'none' (default: all)")
    p.add_argument("--seeds", type=int, help="synthetic seeds per (head_dim, v_std) (default 2, quick 1)")
    p.add_argument("--passages", type=int, help="Austen passages for SmolLM2 (default 2, quick 1)")
    p.add_argument("--tokens", type=int, help="tokens per case, multiple of 128 (default 1024, quick 256)")
    p.add_argument("--layer-stride", type=int, help="capture every N-th SmolLM2 layer (default 2, quick 10)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the many small tensors run fastest single-threaded)")
    p.set_defaults(func=main)


def _split(s: str | None) -> list[str] | None:
    if s is None:
        return None
    return [] if s.strip().lower() == "none" else [x.strip() for x in s.split(",") if x.strip()]


def main(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tokens is not None and (args.tokens < 128 or args.tokens % 128):
        print("kvarn fidelity: --tokens must be a positive multiple of 128", file=sys.stderr)
        return 2
    try:
        methods = all_methods(_split(args.presets), _split(args.numerics), _split(args.baselines))
        sources = SOURCES if args.source == "all" else (args.source,)
        t0 = time.time()
        rows = run_fidelity(sources, quick=args.quick, keep_sink=args.keep_sink, seeds=args.seeds,
                            passages=args.passages, tokens=args.tokens, layer_stride=args.layer_stride,
                            methods=methods)
    except (ValueError, RuntimeError) as e:
        print(f"kvarn fidelity: {e}", file=sys.stderr)
        return 1
    print(format_table(rows))
    print(f"\n({time.time() - t0:.0f} s; keep_sink={args.keep_sink}; metrics are means over cases)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {len(rows)} rows to {args.json}", file=sys.stderr)
    return 0


def format_table(rows: list[dict]) -> str:
    """Plain-text table, one block per (source, head_dim), rows in input order."""
    cols = [("method", "method", "{}"), ("B/tok", "bytes_per_token", "{:.0f}"), ("bits", "bits_per_element", "{:.2f}"),
            ("nmse_k", "nmse_k", "{:.4f}"), ("nmse_v", "nmse_v", "{:.4f}"), ("p_cos", "attn_score_cosine", "{:.5f}"),
            ("out_err", "attn_output_rel_err", "{:.4f}"), ("worst5", "worst5_vector_err", "{:.4f}")]
    blocks = []
    keys = []
    for r in rows:
        key = (r["source"], r.get("head_dim"))
        if key not in keys:
            keys.append(key)
    for src, d in keys:
        sel = [r for r in rows if r["source"] == src and r.get("head_dim") == d]
        cells = [[fmt.format(r[k]) for _, k, fmt in cols] for r in sel]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _, _) in enumerate(cols)]
        line = lambda vals: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))
        out = [f"== source={src} head_dim={d} ==", line([h for h, _, _ in cols]), line(["-" * w for w in widths])]
        out += [line(c) for c in cells]
        blocks.append("\n".join(out))
    return "\n\n".join(blocks)
