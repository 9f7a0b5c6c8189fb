"""The launcher's split-K choice with ``splits_for_two_warps`` against the wave model's alone (Qwen3-8B layer).

  python benchmarks/gpu/check_warps2_splits.py --json out.json
Per (batch, context[, table width]): the wave model's S (choose_num_splits) and the launcher's default (more
splits where they reach the 2-warp threshold), the warps following the launch size in both, each timed as the
median us of a CUDA-graph replay, L2 flushed, on one state; ``speedup`` = wave model's time / default's. The
wide rows pad the block table to 256 tiles (max_model_len 32K) while the contexts stay short, as vLLM's static
tables do.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from check_split_policy import timed_rows
from kvarn.config import KvarnConfig
from kvarn.kernels import choose_num_splits
from kvarn.kernels.decode_attention import splits_for_two_warps

FULL = [(128, 2048), (128, 8192), (128, 32768), (64, 8192), (64, 32768), (100, 4096), (48, 16384), (140, 8192),
        (32, 8192), (32, 32768), (40, 4096)]
WIDE = [(128, 1152), (64, 1152), (100, 2048), (140, 4096)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--width", type=int, default=256, help="table width in tiles of the wide rows")
    a = ap.parse_args(argv)
    cfg = KvarnConfig.from_name("kvarn_k4v2_g128", head_dim=128)
    sms, hk = torch.cuda.get_device_properties(0).multi_processor_count, 8
    rules = (("wave_model", lambda b, t: choose_num_splits(b, hk, t, sms)),
             ("default", lambda b, t: splits_for_two_warps(b, hk, t, sms, choose_num_splits(b, hk, t, sms))))
    rows = timed_rows(FULL, cfg, hk, rules, "speedup") + timed_rows(WIDE, cfg, hk, rules, "speedup", width=a.width)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
