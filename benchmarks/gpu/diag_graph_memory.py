"""Why vLLM's CUDA-graph memory estimate charges kvarn more at a longer max_model_len (GPU host, vLLM 0.26).

vLLM's V1 model runner estimates CUDA-graph memory before it sizes the KV cache
(``GPUModelRunner.profile_cudagraph_memory``: the first capture of each mode, plus the second capture times
the number of graphs). On 2026-11-30 it charged kvarn 6.77 GiB at max_model_len 8,464 against 0.37 GiB at
2,576. This script starts one in-process engine per max_model_len and wraps ``_warmup_and_capture`` during
that profiling: per capture it prints the device memory drop (what vLLM counts), the allocator's allocated
and reserved deltas, and the largest allocation sites still alive afterwards (torch memory history, Python
frames), so the growth can be traced to the code that allocates it.

    python3 benchmarks/gpu/diag_graph_memory.py MODEL_DIR KV_DTYPE --max-model-len 8464
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

import torch


def _sites(snapshot: dict, known: set, top: int = 6) -> list[tuple[str, int]]:
    """Live blocks not in ``known`` grouped by their innermost frame in vllm/kvarn code, largest first."""
    by = collections.Counter()
    for seg in snapshot["segments"]:
        for blk in seg["blocks"]:
            if blk["state"] != "active_allocated" or blk["address"] in known:
                continue
            frames = blk.get("frames") or []
            site = next((f"{os.path.basename(f['filename'])}:{f['line']} {f['name']}" for f in frames
                         if "kvarn" in f["filename"] or "/vllm/" in f["filename"]), "?")
            by[site] += blk["size"]
    return by.most_common(top)


def _live(snapshot: dict) -> set:
    return {b["address"] for s in snapshot["segments"] for b in s["blocks"] if b["state"] == "active_allocated"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("kv_dtype")
    ap.add_argument("--max-model-len", type=int, default=8464)
    ap.add_argument("--max-num-seqs", type=int, default=1024)
    ap.add_argument("--captures", type=int, default=2, help="captures per mode to report (vLLM profiles 2)")
    ap.add_argument("--no-sites", dest="sites", action="store_false", help="skip the allocation-site census")
    a = ap.parse_args(argv)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM
    from vllm.v1.worker import gpu_model_runner as gmr

    orig_capture = gmr.GPUModelRunner._warmup_and_capture
    orig_profile = gmr.GPUModelRunner.profile_cudagraph_memory
    state = {"profiling": False, "seen": collections.Counter()}

    def capture(self, desc, cudagraph_runtime_mode, *args, **kw):
        mode = cudagraph_runtime_mode.name
        report = state["profiling"] and state["seen"][mode] < a.captures
        if not report:
            return orig_capture(self, desc, cudagraph_runtime_mode, *args, **kw)
        state["seen"][mode] += 1
        torch.cuda.synchronize()
        free0, a0, r0 = torch.cuda.mem_get_info()[0], torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
        known = _live(torch.cuda.memory._snapshot()) if a.sites else set()
        out = orig_capture(self, desc, cudagraph_runtime_mode, *args, **kw)
        torch.cuda.synchronize()
        free1, a1, r1 = torch.cuda.mem_get_info()[0], torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
        mib = 2**20
        print(f"DIAG {mode} tokens={desc.num_tokens} uniform={desc.uniform} seq_lens={kw.get('profile_seq_lens')} "
              f"device_drop={(free0 - free1) / mib:.1f} MiB allocated_delta={(a1 - a0) / mib:.1f} MiB "
              f"reserved_delta={(r1 - r0) / mib:.1f} MiB", flush=True)
        if a.sites:
            try:
                for site, size in _sites(torch.cuda.memory._snapshot(), known):
                    print(f"DIAG   {size / mib:9.1f} MiB  {site}", flush=True)
            except Exception as e:  # noqa: BLE001 - a diagnostic must not stop the engine
                print(f"DIAG   (sites unavailable: {type(e).__name__}: {e})", flush=True)
        return out

    def profile(self):
        state["profiling"] = True
        torch.cuda.memory._record_memory_history(max_entries=200000, stacks="python")
        try:
            est = orig_profile(self)
        finally:
            torch.cuda.memory._record_memory_history(enabled=None)
            state["profiling"] = False
        print(f"DIAG estimate {est / 2**30:.2f} GiB", flush=True)
        return est

    gmr.GPUModelRunner._warmup_and_capture = capture
    gmr.GPUModelRunner.profile_cudagraph_memory = profile
    kw = {"block_size": 128} if a.kv_dtype.startswith("kvarn_") else {}
    print(f"DIAG === {a.kv_dtype} max_model_len {a.max_model_len}", flush=True)
    llm = LLM(model=a.model, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
              kv_cache_dtype=a.kv_dtype, gpu_memory_utilization=0.90, max_model_len=a.max_model_len,
              max_num_seqs=a.max_num_seqs, seed=0, **kw)
    cc = llm.llm_engine.vllm_config.cache_config
    print(f"DIAG capacity {int(cc.num_gpu_blocks) * int(cc.block_size)} tokens", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
