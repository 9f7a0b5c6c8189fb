"""Why was ``KVARN_MQ_GROUP=4`` slower end to end? The kernel alone on a chunked-prefill continuation.

Qwen3-8B layer (Hq 32 / Hk 8 / D 128, k4v2_g128). One request whose continuation chunk of T tokens starts
after ``ctx`` cached tokens (records, sink and tail in the pool, as ``bench_decode.kvarn_state`` builds them):
every token attends causally to [0, pos]. Per row count T and tokens_per_program (1 = one program per token,
the default routing; 4 = ``KVARN_MQ_GROUP=4``):

  first_ms   wall time of the first call (Triton's JIT compile of a new specialization included)
  second_ms  wall time of a second call with T - 4 rows (a new row count: does it recompile?)
  us         median per layer call, CUDA-graph replay

  cd benchmarks/gpu && python3 probe_mq_group.py [--rows 1020,1024,256] [--ctx 1024] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench_decode import kvarn_state
from gpu_timing import device_info, graph_ms
from kvarn.config import KvarnConfig
from kvarn.kernels import kvarn_decode_attention


def continuation_args(rows: int, ctx: int, tpr: int, state: dict) -> tuple:
    """(q [rows', 32, 128], block_table [rows' / tpr, M], seq_lens [rows']) of one chunk; rows' = rows
    rounded up to tpr (padding rows have length 0)."""
    padded = -(-rows // tpr) * tpr
    lens = torch.zeros(padded, dtype=torch.int32, device="cuda")
    lens[:rows] = torch.arange(ctx + 1, ctx + rows + 1, dtype=torch.int32, device="cuda")
    table = state["block_table"][:1].expand(padded // tpr, -1).contiguous()
    q = torch.randn(padded, 32, 128, device="cuda", dtype=torch.bfloat16)
    return q, table, lens


def wall_ms(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1020,1024,256")
    ap.add_argument("--ctx", type=int, default=1024, help="cached tokens before the chunk")
    ap.add_argument("--tpr", default="1,4")
    ap.add_argument("--json")
    a = ap.parse_args()
    cfg = KvarnConfig.from_name("kvarn_k4v2_g128", 128)
    rows_list = [int(x) for x in a.rows.split(",")]
    total = a.ctx + max(rows_list)
    state, _ = kvarn_state(1, -(-total // cfg.group) * cfg.group, 8, cfg)
    out = {"device": device_info(), "ctx": a.ctx, "results": []}
    print(f"{'tpr':>4} {'rows':>6} {'first_ms':>10} {'second_ms':>10} {'us':>10}")
    for tpr in (int(x) for x in a.tpr.split(",")):
        for rows in rows_list:
            q, table, lens = continuation_args(rows, a.ctx, tpr, state)
            q2, table2, lens2 = continuation_args(rows - 4, a.ctx, tpr, state)

            def call(q=q, table=table, lens=lens, tpr=tpr):
                return kvarn_decode_attention(q, state["kv_cache"], state["pool_k"], state["pool_v"],
                                              state["block_to_slot"], table, lens, 128**-0.5, cfg,
                                              tokens_per_program=tpr)

            first = wall_ms(call)
            second = wall_ms(lambda: call(q2, table2, lens2))
            us = graph_ms(call) * 1e3
            print(f"{tpr:>4} {rows:>6} {first:>10.1f} {second:>10.1f} {us:>10.1f}", flush=True)
            out["results"].append(dict(tpr=tpr, rows=rows, first_ms=first, second_ms=second, us=us))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
