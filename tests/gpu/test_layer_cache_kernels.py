"""The backend's kernel step path (flush + rotate-append + routed attention: FlashAttention-style
prefill for fresh prompts, fused decode rows for decodes and continuation chunks) under a simulated
vLLM schedule, against the reference paged attention with quantize_new_tiles=False on the same cache."""


import dataclasses

import numpy as np
import pytest
import torch

from kvarn.config import KvarnConfig
from kvarn.reference.paged_attention import paged_attention
from kvarn.vllm_plugin.layer_cache import LayerCache
from kvarn.vllm_plugin.routing import plan_route
from sim_schedule import retire_finished, schedule_step, step_path_setup

pytestmark = pytest.mark.gpu


def test_plan_route_splits_fresh_and_rows():
    # requests: decode (ctx 9), fresh prompt of 4, continuation of 3 after 5, 1-token fresh prompt
    qsl = np.array([0, 1, 5, 8, 9])
    seq = np.array([10, 4, 8, 1])
    r = plan_route(qsl, seq, "cpu")
    assert not r.decode_only and r.mq_range is None and r.fresh_range == (1, 5)
    assert r.fresh_tokens.tolist() == [1, 2, 3, 4] and r.fresh_cu.tolist() == [0, 4] and r.fresh_max == 4
    assert r.mq_tokens.tolist() == [0, 5, 6, 7, 8]
    assert r.mq_req.tolist() == [0, 2, 2, 2, 3]
    assert r.mq_len.tolist() == [10, 6, 7, 8, 1]
    assert plan_route(np.array([0, 1, 2]), np.array([5, 7]), "cpu").decode_only
    with pytest.raises(ValueError, match="more new tokens"):
        plan_route(np.array([0, 3]), np.array([2]), "cpu")
    assert r.num_grp == 0 and r.group == 1


def test_plan_route_marks_contiguous_runs():
    """vLLM's order (running requests, then new prompts): both runs are slices; a decode after a prompt is not."""
    r = plan_route(np.array([0, 1, 2, 5, 9]), np.array([7, 9, 3, 4]), "cpu")  # 2 decodes, 2 prompts
    assert r.mq_range == (0, 2) and r.fresh_range == (2, 9)
    r = plan_route(np.array([0, 3, 4, 8]), np.array([3, 9, 4]), "cpu")  # prompt, decode, prompt
    assert r.mq_range == (3, 4) and r.fresh_range is None
    assert plan_route(np.array([0, 1, 2]), np.array([5, 7]), "cpu").mq_range == (0, 2)


def test_plan_route_groups_continuation_tokens():
    # decode (ctx 9), continuation of 5 after 5, fresh prompt of 2, continuation of 2 after 8; groups of 4
    qsl = np.array([0, 1, 6, 8, 10])
    seq = np.array([10, 10, 2, 10])
    r = plan_route(qsl, seq, "cpu", group=4)
    assert r.mq_tokens.tolist() == [0] and r.fresh_tokens.tolist() == [6, 7]
    assert r.group == 4 and r.grp_req.tolist() == [1, 1, 3]
    assert r.grp_src.tolist() == [1, 2, 3, 4, 5, 0, 0, 0, 8, 9, 0, 0]
    assert r.grp_len.tolist() == [6, 7, 8, 9, 10, 0, 0, 0, 9, 10, 0, 0]
    assert r.grp_rows.tolist() == [0, 1, 2, 3, 4, 8, 9] and r.grp_tokens.tolist() == [1, 2, 3, 4, 5, 8, 9]
    assert r.num_mq + r.num_fresh + r.num_grp == 10
    with pytest.raises(ValueError, match="KVARN_MQ_GROUP"):
        plan_route(qsl, seq, "cpu", group=3)


@pytest.mark.parametrize("act,group,sink,dense_min", [
    (torch.float16, 1, "fp16", 0), (torch.bfloat16, 1, "fp16", 0), (torch.bfloat16, 4, "fp16", 0),
    (torch.bfloat16, 1, "quantized", 0), (torch.bfloat16, 4, "fp16", 16), (torch.float16, 1, "quantized", 16),
    (torch.bfloat16, 4, "token", 16), (torch.float16, 1, "token", 0)])
def test_kernel_step_path_matches_reference(dev, act, group, sink, dense_min):
    seed, cfg, pool, cache, records, free_blocks, reqs = step_path_setup(sink, [5, 64, 65, 150, 200, 131], dev,
                                                                         use_kernels=True)
    g, hq, d = cfg.group, 6, 64
    steps = grouped = dense = sinks_flushed = sliced = 0
    while reqs:
        st = schedule_step(reqs, free_blocks, g, 90, [1, 1, 7, 64, 200], pad=0)
        batch, qsl, seq_lens, table = st.batch, st.qsl, st.seq_lens, st.table
        plan = pool.plan_step(st.slot_mapping, st.first)
        key, value = st.key.to(act), st.value.to(act)
        query = torch.randn(key.shape[0], hq, d).to(act)

        def t(x):
            return torch.from_numpy(x).to(dev)

        cache.update(records, key.to(dev), value.to(dev), t(plan.flush_blocks), t(plan.flush_slots), t(plan.write_rows),
                     t(plan.flush_rows))
        route = plan_route(qsl, np.asarray(seq_lens), dev, group, tile=g, dense_min=dense_min)
        grouped += route.num_grp
        dense += route.num_dense
        sinks_flushed += int(np.isin(plan.flush_blocks, [r["blocks"][0] for r in reqs.values() if r["blocks"]]).sum())
        args = (records, query.to(dev), key.to(dev), value.to(dev), t(plan.block_to_slot),
                torch.tensor(table, dtype=torch.int32, device=dev), torch.tensor(seq_lens, device=dev),
                torch.tensor(qsl), d**-0.5)
        out = torch.full((key.shape[0], hq, d), float("nan"), dtype=act, device=dev)  # poisoned, like vLLM's output
        assert cache.attend(*args, route=route, out=out) is out  # every row written in place
        # the same step through gathers and scatters only: the in-place slices must not change a bit
        gathered = dataclasses.replace(route, mq_range=None, fresh_range=None)
        assert torch.equal(cache.attend(*args, route=gathered), out)
        sliced += (route.mq_range is not None or route.fresh_range is not None) and not route.decode_only
        ref = paged_attention(query, key, value, records.cpu(), cache.pool_k.cpu(), cache.pool_v.cpu(),
                              torch.from_numpy(plan.block_to_slot), torch.tensor(table), torch.tensor(seq_lens),
                              torch.tensor(qsl), cfg, d**-0.5, quantize_new_tiles=False)
        err = (out.cpu().float() - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-6)
        tol = 2.5e-2 if act == torch.bfloat16 else 1.2e-2
        assert torch.isfinite(out).all() and err.max() < tol, f"seed {seed} step {steps}: max rel err {err.max():.2e}"
        for rid, n in batch:
            reqs[rid]["done"] += n
        retire_finished(reqs, pool, free_blocks)
        steps += 1
    assert steps > 5
    assert (grouped > 0) == (group > 1), f"{grouped} continuation tokens went to grouped rows"
    assert (dense > 0) == (dense_min > 0), f"{dense} continuation tokens took the dense route"
    assert (sinks_flushed > 0) == (sink != "fp16"), f"{sinks_flushed} first blocks were flushed"
    if cfg.token_sink:  # first blocks took sink rows (retired at the end: prefix caching is on)
        assert pool.stats()["sink_rows_free"] < pool.sink_rows or pool.rows_missed
    assert sliced > 0, "no mixed step had a contiguous run of decode rows or prompts"


def test_padded_decode_rows_are_zero(dev):
    """CUDA-graph padding: requests without tokens (seq_len 0) give finite zero rows, others are untouched."""
    cfg = KvarnConfig.from_name("k4v2_g64", head_dim=64)
    cache = LayerCache(cfg, 2, 4, device=dev, use_kernels=True)
    cache.pool_k.normal_()
    cache.pool_v.normal_()
    records = torch.zeros(8, 2, cfg.record_bytes, dtype=torch.uint8, device=dev)
    b2s = torch.full((8,), -1, dtype=torch.int32, device=dev)
    b2s[3] = 1
    table = torch.tensor([[3, 0], [5, 0], [5, 0]], dtype=torch.int32, device=dev)
    seq = torch.tensor([40, 0, 0], dtype=torch.int32, device=dev)
    q = torch.randn(3, 6, 64, device=dev).half()
    route = plan_route(np.array([0, 1, 1, 1]), np.array([40, 0, 0]), dev)
    assert route.decode_only
    out = cache.attend(records, q, q[:, :2], q[:, :2], b2s, table, seq, torch.tensor([0, 1, 1, 1]), 0.125, route=route)
    assert torch.isfinite(out).all() and out[1:].abs().max() == 0 and out[0].abs().max() > 0


def test_cuda_step_state_flush_equals_layer_update(dev):
    """The builder-side flush (all layers, one launch) writes the same records as each layer's own flush."""
    from kvarn.vllm_plugin.cuda_step import CudaStepState
    cfg = KvarnConfig.from_name("k4v2_g64", head_dim=64)
    state = CudaStepState(cfg, dev, num_blocks=6, max_tokens=16)
    state.warm_up()  # nothing registered yet: a no-op
    assert not state.warm
    caches, mine, theirs = [], [], []
    for i in range(3):
        c = LayerCache(cfg, 2, 4, device=dev, use_kernels=True)
        c.pool_k.normal_()
        c.pool_v.normal_()
        caches.append(c)
        mine.append(torch.zeros(6, 2, cfg.record_bytes, dtype=torch.uint8, device=dev))
        theirs.append(torch.zeros(6, 2, cfg.record_bytes, dtype=torch.uint8, device=dev))
        state.register(f"layer{i}", c, mine[-1])
    pools = [(c.pool_k.clone(), c.pool_v.clone()) for c in caches]
    state.warm_up()  # compiles the flush kernel on scratch tensors: no layer's pool or records change
    assert state.warm and not any(r.any() for r in mine)
    assert all(torch.equal(c.pool_k, k) and torch.equal(c.pool_v, v) for c, (k, v) in zip(caches, pools))
    blocks, slots = np.array([4, 1]), np.array([2, 0])
    assert state.flush(["layer0", "layer1", "layer2", "missing"], blocks, slots) == 6
    for c, r in zip(caches, theirs):
        c.update(r, torch.zeros(0, 2, 64, device=dev), torch.zeros(0, 2, 64, device=dev),
                 torch.from_numpy(blocks).to(dev), torch.from_numpy(slots).to(dev), torch.zeros(0, dtype=torch.int64, device=dev))
    for a, b in zip(mine, theirs):
        assert torch.equal(a, b) and a[[1, 4]].any() and not a[[0, 2, 3, 5]].any()
    b2s, rows = state.stage(np.array([-1, 0, -1, 2, -1, -1]), np.array([3, -1, 7]))
    assert b2s.tolist() == [-1, 0, -1, 2, -1, -1] and rows.tolist() == [3, -1, 7]
    assert state.capture_rows(5).tolist() == [-1] * 5


def test_grouped_kernel_warm_up_writes_nothing(dev):
    """warm_grouped_kernel: one launch of padding rows compiles the grouped kernel, changes no pool or record
    byte, and runs once per specialization (group 1 = grouping off: nothing to compile)."""
    cfg = KvarnConfig.from_name("k4v2_g64", head_dim=64)
    cache = LayerCache(cfg, 2, 4, device=dev, use_kernels=True)
    cache.pool_k.normal_()
    cache.pool_v.normal_()
    records = torch.randint(0, 256, (6, 2, cfg.record_bytes), dtype=torch.uint8, device=dev)
    before = (cache.pool_k.clone(), cache.pool_v.clone(), records.clone())
    q = torch.randn(3, 6, 64, device=dev, dtype=torch.bfloat16)
    b2s = torch.full((6,), -1, dtype=torch.int32, device=dev)
    table = torch.zeros(3, 5, dtype=torch.int32, device=dev)
    assert not cache.warm_grouped_kernel(q, records, b2s, table, 1)
    assert cache.warm_grouped_kernel(q, records, b2s, table, 4)
    assert not cache.warm_grouped_kernel(q, records, b2s, table, 4)  # compiled already
    other = LayerCache(cfg, 2, 4, device=dev, use_kernels=True)  # another layer: no launch, then no key lookups
    assert not other.warm_grouped_kernel(q, records, b2s, table, 4) and other._warm_group == cache._warm_group == 4
    assert all(torch.equal(a, b) for a, b in zip(before, (cache.pool_k, cache.pool_v, records)))
