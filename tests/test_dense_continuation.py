"""The dense route for long continuation chunks (routing.plan_route(tile=..., dense_min=...) and
LayerCache.attend_dense), on CPU: index bookkeeping, the bottom-right causal SDPA fallback, and the
attention itself against the reference paged attention under a simulated vLLM schedule."""


import numpy as np
import pytest
import torch

from kvarn.reference.paged_attention import paged_attention
from kvarn.vllm_plugin import layer_cache
from kvarn.vllm_plugin.routing import plan_route, sdpa_prefill
from sim_schedule import retire_finished, schedule_step, step_path_setup


def test_plan_route_dense_indices():
    # decode (ctx 10), continuation of 5 after 5, fresh prompt of 2, continuation of 2 after 8; tile 4
    qsl = np.array([0, 1, 6, 8, 10])
    seq = np.array([10, 10, 2, 10])
    r = plan_route(qsl, seq, "cpu", group=4, tile=4, dense_min=3)
    dc = r.dense
    assert dc.tokens.tolist() == [1, 2, 3, 4, 5] and dc.cu_q.tolist() == [0, 5] and dc.max_q == 5
    assert dc.tab_rows.tolist() == [1, 1, 1] and dc.tab_cols.tolist() == [0, 1, 2]  # ceil(10 / 4) tiles
    assert dc.keep.tolist() == list(range(10)) and dc.cu_k.tolist() == [0, 10] and dc.max_k == 10
    assert r.grp_req.tolist() == [3] and r.mq_tokens.tolist() == [0] and r.fresh_tokens.tolist() == [6, 7]
    assert r.num_mq + r.num_fresh + r.num_grp + r.num_dense == 10
    # two dense chunks: the second's context rows start after the first's 3 tiles (12 rows)
    r2 = plan_route(qsl, seq, "cpu", group=1, tile=4, dense_min=2)
    assert r2.dense.tokens.tolist() == [1, 2, 3, 4, 5, 8, 9] and r2.dense.cu_k.tolist() == [0, 10, 20]
    assert r2.dense.keep.tolist() == list(range(10)) + list(range(12, 22))
    # off: no tile size, dense_min 0, or chunks shorter than dense_min
    for kw in (dict(dense_min=3), dict(tile=4, dense_min=0), dict(tile=4, dense_min=6)):
        assert plan_route(qsl, seq, "cpu", group=1, **kw).dense is None
    with pytest.raises(ValueError, match="KVARN_DENSE_MIN"):
        plan_route(qsl, seq, "cpu", tile=4, dense_min=1)


def test_sdpa_prefill_bottom_right_causal():
    torch.manual_seed(torch.seed() % 2**31)
    q, k, v = torch.randn(3, 4, 8), torch.randn(7, 2, 8), torch.randn(7, 2, 8)
    out = sdpa_prefill(q, k, v, torch.tensor([0, 3]), 3, 0.3, torch.tensor([0, 7]), 7)
    for i in range(3):  # query i sits at position 4 + i
        kk = k[:5 + i].repeat_interleave(2, 1).transpose(0, 1)
        vv = v[:5 + i].repeat_interleave(2, 1).transpose(0, 1)
        p = torch.softmax(q[i][:, None, :] @ kk.transpose(1, 2) * 0.3, -1)
        torch.testing.assert_close(out[i], (p @ vv)[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sink,tiles_per_pass", [("fp16", 256), ("quantized", 256), ("fp16", 2), ("token", 2)])
def test_dense_chunks_match_reference(sink, tiles_per_pass, monkeypatch):
    """Under a random schedule (chunks of 1-200 tokens, tiles of 64), every continuation chunk of >= 8
    tokens answered by attend_dense equals the reference paged attention (quantize_new_tiles=False: tiles
    flushed before the step as stored, this step's rows fp16) within fp16 rounding, also when the context is
    dequantized a few tiles per pass."""
    monkeypatch.setattr(layer_cache, "DENSE_TILES_PER_PASS", tiles_per_pass)  # 2: contexts dequantized in passes
    seed, cfg, pool, cache, records, free_blocks, reqs = step_path_setup(sink, [64, 150, 200, 131, 300])
    g, hq, d = cfg.group, 6, 64
    dense_tokens = 0
    while reqs:
        st = schedule_step(reqs, free_blocks, g, 260, [1, 7, 64, 100, 200], pad=0)
        plan = pool.plan_step(st.slot_mapping, st.first)
        query = torch.randn(st.key.shape[0], hq, d)

        def t(x):
            return torch.from_numpy(x)

        cache.update(records, st.key, st.value, t(plan.flush_blocks), t(plan.flush_slots), t(plan.write_rows),
                     t(plan.flush_rows))
        route = plan_route(st.qsl, np.asarray(st.seq_lens), "cpu", group=1, tile=g, dense_min=8)
        if route.dense is not None:
            dc = route.dense
            b2s, table = t(plan.block_to_slot).int(), torch.tensor(st.table, dtype=torch.int32)
            out = cache.attend_dense(records, query.index_select(0, dc.tokens), b2s, table, d**-0.5, dc)
            ref = paged_attention(query, st.key, st.value, records, cache.pool_k, cache.pool_v, t(plan.block_to_slot),
                                  torch.tensor(st.table), torch.tensor(st.seq_lens), torch.tensor(st.qsl), cfg,
                                  d**-0.5, quantize_new_tiles=False).index_select(0, dc.tokens)
            err = (out.float() - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-6)
            assert out.dtype == torch.float16 and err.max() < 5e-3, f"seed {seed}: max rel err {err.max():.2e}"
            dense_tokens += dc.tokens.shape[0]
        for rid, n in st.batch:
            reqs[rid]["done"] += n
        retire_finished(reqs, pool, free_blocks)
    assert dense_tokens > 100, f"seed {seed}: only {dense_tokens} tokens took the dense route"
