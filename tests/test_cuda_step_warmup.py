"""CudaStepState.warm_up compiles the flush kernel the way the real flush calls it (CPU, kernel mocked).

Triton specializes integer arguments equal to 1, so a one-layer warm-up compiled a variant the real
all-layer flush never uses and the real one still compiled mid-serving (seen on the H200 TP=2 run:
``jit_monitor`` warned ``_flush_kernel`` at the first complete tile). Likewise the warp count: the launcher picks
8 warps for small flushes and 4 for large ones, one compiled variant each (seen on the H200, 2026-11-30)."""

import torch

import kvarn.kernels as kernels
from kvarn.config import KvarnConfig
from kvarn.vllm_plugin.cuda_step import CudaStepState
from kvarn.vllm_plugin.layer_cache import LayerCache


def test_warm_up_passes_every_layer_with_real_strides(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels, "flush_tiles_layers", lambda *a, **k: calls.append((a, k)))
    cfg = KvarnConfig.from_name("k4v2_g64", head_dim=64)
    state = CudaStepState(cfg, "cpu", num_blocks=6, max_tokens=16)
    caches, records = [], []
    for i in range(5):
        c = LayerCache(cfg, 2, 4, device="cpu", use_kernels=False)
        caches.append(c)
        records.append(torch.zeros(6, 2, cfg.record_bytes, dtype=torch.uint8))
        state.register(f"layer{i}", c, records[-1])
    state.warm_up()
    # one call per warp count the launcher can pick (8 for small launches, 4 for large ones)
    assert state.warm and len(calls) == 2 and sorted(k["num_warps"] for _, k in calls) == [4, 8]
    pks, pvs, recs, layers, slots, blocks, cfg_ = calls[0][0]
    assert len(pks) == len(pvs) == len(recs) == 5
    assert pks[0].stride() == caches[0].pool_k.stride() and pks[0].dtype == caches[0].pool_k.dtype
    assert recs[0].stride() == records[0].stride() and recs[0].data_ptr() != records[0].data_ptr()
    assert layers.tolist() == slots.tolist() == blocks.tolist() == [0] and cfg_ is cfg
    state.warm_up()  # once only
    assert len(calls) == 2
