"""Timing helpers for the GPU benchmarks: CUDA-graph replay timed by triton.testing.do_bench
(median, L2 flushed between replays), and the device-to-device copy rate (bytes read + written)."""

from __future__ import annotations

import torch
import triton


def graph_ms(fn, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median ms of one call of ``fn`` (all its launches), replayed from a CUDA graph."""
    fn()  # compile / autotune outside the capture
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    ms = triton.testing.do_bench(graph.replay, warmup=warmup_ms, rep=rep_ms, return_mode="median")
    del graph
    return float(ms)


def copy_rate_gbs(nbytes: int = 4 << 30) -> float:
    """Device-to-device copy rate in GB/s, counting bytes read plus bytes written (random data)."""
    a = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = triton.testing.do_bench(lambda: b.copy_(a), warmup=25, rep=200, return_mode="median")
    del a, b
    torch.cuda.empty_cache()
    return 2 * nbytes / (ms * 1e-3) / 1e9


def device_info() -> dict:
    p = torch.cuda.get_device_properties(0)
    return {"gpu": p.name, "sms": p.multi_processor_count, "mem_gib": round(p.total_memory / 2**30, 1),
            "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda}
