"""The automatic split-K factor against the previous rule, same run, same shapes (Qwen3-8B layer).

  python benchmarks/gpu/check_split_policy.py --json out.json
Prints, per (batch, context): the previous rule's S and time, the wave model's S and time (median us of a
CUDA-graph replay, L2 flushed), and their ratio.

  python benchmarks/gpu/check_split_policy.py --wide 67 --json out.json
Batches that fill the GPU (B*Hk >= 4 programs per SM) with a block table 67 tiles wide (max_model_len
8,576), contexts short and full: the wave model's choice without the full-GPU cap (``cap_full=False``)
against one split (what the cap gives).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from bench_decode import kvarn_state
from gpu_timing import graph_ms
from kvarn.config import KvarnConfig
from kvarn.kernels import choose_num_splits, kvarn_decode_attention

SHAPES = [(1, 2048), (8, 2048), (32, 2048), (128, 2048), (16, 2560), (1, 8192), (8, 8192), (32, 8192),
          (1, 32768), (8, 32768), (32, 32768), (1, 131072)]


def previous_rule(batch, hk, max_blocks, sms, target_waves=8.0, min_tiles_per_split=4):
    """The rule before 2026-11-29 evening: fill 8 waves of SMs, >= 4 tiles per split."""
    want = -(-int(target_waves * sms) // (batch * hk))
    s = max(1, min(want, max_blocks // min_tiles_per_split))
    tps = -(-max_blocks // s)
    return -(-max_blocks // tps)


WIDE_SHAPES = [(96, 1152), (200, 1152), (300, 1152), (496, 1152), (600, 1152), (200, 8576), (496, 8576)]


def timed_rows(shapes, cfg, hk: int, rules, ratio: str, width: int | None = None) -> list[dict]:
    """Per (batch, context): each of the two ``rules`` ((name, f(batch, tiles) -> S)) timed on one state
    (median us of a CUDA-graph replay, L2 flushed); ``ratio`` = first rule's time / second's. ``width``
    pads the block table to that many tiles (the rules see the padded width, as under vLLM)."""
    rows = []
    for bsz, ctx in shapes:
        st, _ = kvarn_state(bsz, ctx, hk, cfg)
        tiles = st["block_table"].shape[1]
        row = {"batch": bsz, "context": ctx}
        if width:
            table = st["block_table"]
            st["block_table"] = torch.zeros(bsz, width, dtype=torch.int32, device="cuda")
            st["block_table"][:, :tiles] = table
            tiles = row["table_width"] = width
        q = torch.randn(bsz, 32, 128, device="cuda", dtype=torch.bfloat16)
        seq = torch.full((bsz,), ctx, dtype=torch.int32, device="cuda")
        for name, rule in rules:
            s = rule(bsz, tiles)
            us = 1e3 * graph_ms(lambda: kvarn_decode_attention(q, seq_lens=seq, scale=0.088, cfg=cfg, num_splits=s, **st))
            row[name] = {"splits": s, "us": round(us, 2)}
        row[ratio] = round(row[rules[0][0]]["us"] / row[rules[1][0]]["us"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
        del st
        torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--wide", type=int, default=0, help="table width in tiles: the full-GPU check instead")
    a = ap.parse_args(argv)
    cfg = KvarnConfig.from_name("kvarn_k4v2_g128", head_dim=128)
    sms, hk = torch.cuda.get_device_properties(0).multi_processor_count, 8
    if a.wide:  # full-GPU batches, wide table: the uncapped wave model vs one split
        rules = (("uncapped", lambda b, t: choose_num_splits(b, hk, t, sms, cap_full=False)), ("one_split", lambda b, t: 1))
        rows = timed_rows(WIDE_SHAPES, cfg, hk, rules, "one_split_speedup", width=a.wide)
    else:
        rules = (("previous", lambda b, t: previous_rule(b, hk, t, sms)),
                 ("wave_model", lambda b, t: choose_num_splits(b, hk, t, sms)))
        rows = timed_rows(SHAPES, cfg, hk, rules, "speedup")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
