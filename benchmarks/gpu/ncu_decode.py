"""A few plain launches (no CUDA graph) of the fused decode kernel, for Nsight Compute (Qwen3-8B layer: Hq 32,
Hk 8, D 128, kvarn_k4v2_g128, random records, sink + tail tiles in the fp16 pool unless ``records``).

    ncu --clock-control none --set full -k regex:_kvarn_decode -s 2 -c 1 -o rep \\
        python3 benchmarks/gpu/ncu_decode.py 768 1152 [records] [--prefetch N]
    ncu -i rep.ncu-rep --page source --csv --print-source sass > sass.csv   # then ncu_stalls.py sass.csv
"""
from __future__ import annotations

import argparse

import torch

from bench_decode import kvarn_state
from kvarn.config import KvarnConfig
from kvarn.kernels import kvarn_decode_attention


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("batch", type=int)
    ap.add_argument("context", type=int)
    ap.add_argument("mode", nargs="?", default="pool", choices=("pool", "records"))
    ap.add_argument("--prefetch", type=int, default=None)
    ap.add_argument("--launches", type=int, default=4)
    a = ap.parse_args()
    cfg = KvarnConfig.from_name("kvarn_k4v2_g128", head_dim=128)
    st, nbytes = kvarn_state(a.batch, a.context, 8, cfg)
    if a.mode == "records":
        st["block_to_slot"].fill_(-1)  # every tile a packed record
    q = torch.randn(a.batch, 32, 128, device="cuda", dtype=torch.bfloat16)
    seq = torch.full((a.batch,), a.context, dtype=torch.int32, device="cuda")
    for _ in range(a.launches):
        kvarn_decode_attention(q, seq_lens=seq, scale=0.088, cfg=cfg, prefetch=a.prefetch, **st)
    torch.cuda.synchronize()
    print("ok", nbytes)


if __name__ == "__main__":
    main()
