"""The backend's per-layer step logic (pool writes, flushes, paged reads) under a simulated vLLM
schedule with chunked prefill, decode, ragged lengths and finished requests, against a dense oracle."""

import random

import numpy as np
import pytest
import torch

from kvarn.config import KvarnConfig
from kvarn.reference import rotate
from kvarn.reference.paged_attention import gqa_attention
from kvarn.vllm_plugin.layer_cache import LayerCache
from kvarn.vllm_plugin.pool import SlotPool
from sim_schedule import retire_finished, schedule_step
from test_paged_attention import oracle_one_query


@pytest.mark.parametrize("keep_fp16,sink", [(True, "fp16"), (False, "fp16"), (False, "quantized"), (False, "token")])
def test_simulated_serving_matches_oracle(keep_fp16, sink):
    random.seed(1)
    torch.manual_seed(1)
    cfg = KvarnConfig.from_name("k4v2_g64", head_dim=64, sink=sink)
    g, hkv, hq, d = cfg.group, 2, 6, 64
    num_blocks = 64
    pool = SlotPool(num_blocks if keep_fp16 else 24, g, retire_sinks=True, keep_fp16=keep_fp16,
                    fp16_sink=sink == "fp16", sink_rows=g if cfg.token_sink else 0)
    cache = LayerCache(cfg, hkv, pool.total_slots)
    records = torch.zeros(num_blocks, hkv, cfg.record_bytes, dtype=torch.uint8)
    free_blocks = list(range(num_blocks))
    random.shuffle(free_blocks)
    reqs = {}  # rid -> dict(total, done, blocks, k, v)
    for rid, total in enumerate([5, 64, 65, 150, 200, 131]):
        reqs[rid] = {"total": total, "done": 0, "blocks": [], "k": torch.randn(total, hkv, d) * 2,
                     "v": torch.randn(total, hkv, d) * 0.5}
    budget = 70
    checked = flushed_sinks = 0
    while reqs:
        st = schedule_step(reqs, free_blocks, g, budget, [1, 7, 64, 200])
        batch, qsl, seq_lens, table = st.batch, st.qsl, st.seq_lens, st.table
        plan = pool.plan_step(st.slot_mapping, st.first)
        pool.check_invariants()
        key, value = st.key, st.value
        query = torch.randn(key.shape[0], hq, d)
        t = torch.from_numpy
        cache.update(records, key, value, t(plan.flush_blocks), t(plan.flush_slots), t(plan.write_rows),
                     t(plan.flush_rows))
        out = cache.attend(records, query, key, value, t(plan.block_to_slot), torch.tensor(table),
                           torch.tensor(seq_lens), torch.tensor(qsl), d**-0.5, quantize_new_tiles=not keep_fp16)
        for i, (rid, n) in enumerate(batch):
            r = reqs[rid]
            ctx = r["done"]
            for j in range(-(-ctx // g)):
                if plan.block_to_slot[r["blocks"][j]] < 0:  # flushed tiles: complete, the sink only if quantized
                    assert not keep_fp16 and j >= cfg.first_quantized_tile and (j + 1) * g <= ctx
                    flushed_sinks += j == 0
            for t_i in range(n):
                row = qsl[i] + t_i
                if keep_fp16:  # nothing quantized: fp16 rotated rows everywhere
                    p = ctx + t_i
                    ref = rotate(gqa_attention(rotate(query[row : row + 1]), rotate(r["k"][: p + 1]).half().float(),
                                               rotate(r["v"][: p + 1]).half().float(), d**-0.5, q_offset=p))[0]
                else:
                    ref = oracle_one_query(query[row], ctx + t_i, r["k"], r["v"], cfg, d**-0.5)
                torch.testing.assert_close(out[row], ref, rtol=2e-4, atol=2e-4)
            checked += 1
            r["done"] += n
        retire_finished(reqs, pool, free_blocks)
    assert checked > 10
    assert (flushed_sinks > 0) == (sink != "fp16")
    pool.plan_step(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    st = pool.stats()
    assert st["live"] == 0 and st["pending_flush"] == 0
