"""SlotPool bookkeeping: invariants under a random serving workload, exact reclaim, sink retirement."""

import random

import numpy as np
import pytest

from kvarn.vllm_plugin.pool import PoolExhausted, SlotPool

G = 8


class FakeScheduler:
    """Minimal vLLM-like block allocation: each request owns a block list; freed blocks are reused."""

    def __init__(self, num_blocks):
        self.free = list(range(num_blocks))
        random.shuffle(self.free)
        self.reqs = {}  # rid -> dict(blocks, computed, total)

    def add(self, rid, total):
        self.reqs[rid] = {"blocks": [], "computed": 0, "total": total}

    def step(self, rids, budget):
        slot_mapping, first = [], []
        for rid in rids:
            r = self.reqs[rid]
            n = min(budget, r["total"] - r["computed"])
            for pos in range(r["computed"], r["computed"] + n):
                if pos // G >= len(r["blocks"]):
                    r["blocks"].append(self.free.pop())
                slot_mapping.append(r["blocks"][pos // G] * G + pos % G)
            r["computed"] += n
            first.append(r["blocks"][0])
        return np.array(slot_mapping), np.array(first)

    def finish(self, rid):
        r = self.reqs.pop(rid)
        self.free.extend(r["blocks"])
        return r["blocks"]


@pytest.mark.parametrize("retire,fp16_sink,sink_rows", [(False, True, 0), (True, True, 0), (False, False, 0),
                                                        (True, False, 0), (False, False, 12), (True, False, 9)])
def test_random_workload_keeps_invariants_and_reclaims_everything(retire, fp16_sink, sink_rows):
    random.seed(0)
    max_seqs, budget = 6, 20
    slots = (2 if fp16_sink else 1) * max_seqs + -(-budget // G) * max_seqs + 8
    pool = SlotPool(slots, G, retire_sinks=retire, num_blocks=4, fp16_sink=fp16_sink, sink_rows=sink_rows)
    rows_seen = 0
    sch = FakeScheduler(400)
    live, next_id, finished = [], 0, 0
    for step in range(600):
        while len(live) < max_seqs and next_id < 150:
            sch.add(next_id, random.randint(1, 60))
            live.append(next_id)
            next_id += 1
        batch = random.sample(live, k=random.randint(1, len(live)))
        sm, first = sch.step(batch, budget)
        plan = pool.plan_step(sm, first)
        pool.check_invariants()
        # every written token has a pool row, rows are distinct
        assert (plan.write_rows >= 0).all() and len(set(plan.write_rows.tolist())) == len(sm)
        # flushed blocks are full and not mapped any more (unless re-owned this step)
        for b in plan.flush_blocks:
            assert b not in set((sm // G).tolist()) or plan.block_to_slot[b] >= 0
        # sink rows: only flushed first blocks get one, in the rows after the slots, mapped as -2 - flat row
        for b, r in zip(plan.flush_blocks, plan.flush_rows):
            if r >= 0:
                rows_seen += 1
                assert slots * G <= r < slots * G + sink_rows
                assert plan.block_to_slot[b] == -2 - r or plan.block_to_slot[b] >= 0  # or re-owned this step
        assert (plan.block_to_slot >= -1).all() or sink_rows
        for rid in [r for r in live if sch.reqs[r]["computed"] == sch.reqs[r]["total"]]:
            pool.release(sch.finish(rid))
            live.remove(rid)
            finished += 1
        if not live and next_id >= 150:
            break
    pool.plan_step(np.array([], dtype=np.int64), np.array([], dtype=np.int64))  # drain flushes
    pool.check_invariants()
    st = pool.stats()
    assert finished == 150
    assert st["live"] == 0 and st["pending_flush"] == 0
    if retire and fp16_sink:
        assert st["free"] + st["retired_sinks"] == slots and st["retired_sinks"] > 0
    else:
        assert st["free"] == slots and st["retired_sinks"] == 0
    assert (rows_seen > 0) == (sink_rows > 0)
    if sink_rows:  # every row free, or retired for a prefix-cache hit (none live)
        assert st["sink_rows_free"] + st["sink_rows_retired"] == sink_rows
        assert (st["sink_rows_retired"] > 0) if retire else (st["sink_rows_retired"] == 0)


def test_sink_stays_tail_moves_full_tiles_flush_next_step():
    pool = SlotPool(8, G)
    # request with blocks [5, 9, 2]: prefill of 20 tokens
    sm = np.array([5 * G + i for i in range(G)] + [9 * G + i for i in range(G)] + [2 * G + i for i in range(4)])
    plan = pool.plan_step(sm, np.array([5]))
    assert len(plan.flush_blocks) == 0 and plan.block_to_slot[5] >= 0 and plan.block_to_slot[9] >= 0
    plan = pool.plan_step(np.array([2 * G + 4]), np.array([5]))  # next decode step
    assert plan.flush_blocks.tolist() == [9] and plan.block_to_slot[9] == -1
    assert plan.block_to_slot[5] >= 0 and plan.block_to_slot[2] >= 0  # sink and tail stay fp16
    pool.release([5, 9, 2])
    st = pool.stats()
    assert st["retired_sinks"] == 1 and st["free"] == 7 and st["live"] == 0


def test_quantized_sink_is_flushed_like_any_full_block():
    """KVARN_SINK=quantized: a request's complete first block is flushed the step after it fills, so only
    the tail holds a slot; with prefix caching its release queues no retirement (the record serves hits)."""
    pool = SlotPool(8, G, fp16_sink=False)
    sm = np.array([5 * G + i for i in range(G)] + [9 * G + i for i in range(G)] + [2 * G + i for i in range(4)])
    pool.plan_step(sm, np.array([5]))
    plan = pool.plan_step(np.array([2 * G + 4]), np.array([5]))
    assert sorted(plan.flush_blocks.tolist()) == [5, 9]
    assert plan.block_to_slot[5] == -1 and plan.block_to_slot[9] == -1 and plan.block_to_slot[2] >= 0
    assert pool.stats()["free"] == 7 and not pool.block_sink.any()
    pool.release([5, 9, 2])
    st = pool.stats()
    assert st["retired_sinks"] == 0 and st["free"] == 8 and st["live"] == 0
    pool.check_invariants()


def test_retired_sink_reused_by_prefix_hit_then_evicted_lru():
    pool = SlotPool(3, G)
    pool.plan_step(np.arange(G) + 4 * G, np.array([4]))  # request A: block 4 full sink
    pool.release([4])
    assert pool.stats()["retired_sinks"] == 1
    # request B hits block 4 as its sink and writes block 7
    plan = pool.plan_step(np.array([7 * G]), np.array([4]))
    assert plan.block_to_slot[4] >= 0 and len(plan.flush_blocks) == 0
    # pool pressure: two new requests need 2 more slots -> the retired sink is evicted (flushed)
    plan = pool.plan_step(np.array([10 * G, 11 * G]), np.array([10, 11]))
    assert plan.flush_blocks.tolist() == [4] and plan.block_to_slot[4] == -1
    pool.check_invariants()
    with pytest.raises(PoolExhausted, match="exhausted"):
        pool.plan_step(np.array([12 * G]), np.array([12]))


def test_write_at_offset_zero_reowns_a_held_block():
    pool = SlotPool(4, G)
    pool.plan_step(np.arange(G) + 3 * G, np.array([3]))
    pool.release([3])  # retired
    plan = pool.plan_step(np.array([3 * G, 3 * G + 1]), np.array([6]))  # block 3 is now someone's 2nd block
    assert pool.stats()["retired_sinks"] == 0 and pool.block_fill[3] == 2 and not pool.block_sink[3]
    assert plan.write_rows.tolist() == [plan.block_to_slot[3] * G, plan.block_to_slot[3] * G + 1]


def test_padding_tokens_are_skipped():
    pool = SlotPool(4, G)
    plan = pool.plan_step(np.array([G, -1, -1]), np.array([1]))
    assert plan.write_rows.tolist()[1:] == [-1, -1]


def test_keep_fp16_debug_mode_never_flushes():
    """KVARN_DEBUG_KEEP_FP16=1 (the lossless control of the drift measurements): every complete tile keeps its
    fp16 slot, so nothing is ever quantized; the same workload without it flushes."""
    for keep in (True, False):
        random.seed(1)
        pool = SlotPool(64, G, retire_sinks=False, num_blocks=4, keep_fp16=keep)
        sch = FakeScheduler(64)
        sch.add(0, 5 * G + 3)
        sch.add(1, 3 * G)
        flushed = 0
        for _ in range(6):
            live = [r for r in (0, 1) if sch.reqs[r]["computed"] < sch.reqs[r]["total"]]
            if not live:
                break
            plan = pool.plan_step(*sch.step(live, G))
            pool.check_invariants()
            flushed += len(plan.flush_blocks)
        if keep:
            assert flushed == 0 and int((pool.block_slot >= 0).sum()) == 6 + 3  # every block of both requests
        else:
            assert flushed > 0


def test_token_sink_keeps_row_zero_of_flushed_first_blocks():
    """KVARN_SINK=token: the first block is flushed like any full block and its row 0 goes to a sink row after
    the slots; readers see it as -2 - flat row. A request's end retires the row with prefix caching (a hit
    reuses it; LRU eviction when rows run out) and frees it without; a new owner of the block drops it."""
    pool = SlotPool(8, G, fp16_sink=False, sink_rows=2, retire_sinks=True)
    assert pool.total_slots == 9
    sm = np.array([5 * G + i for i in range(G)] + [9 * G + i for i in range(G)] + [2 * G + i for i in range(4)])
    pool.plan_step(sm, np.array([5]))
    plan = pool.plan_step(np.array([2 * G + 4]), np.array([5]))
    assert sorted(plan.flush_blocks.tolist()) == [5, 9]
    rows = dict(zip(plan.flush_blocks.tolist(), plan.flush_rows.tolist()))
    assert rows[9] == -1 and rows[5] == 8 * G  # sink row 0 = flat row num_slots * G
    assert plan.block_to_slot[5] == -2 - 8 * G and plan.block_to_slot[9] == -1 and plan.block_to_slot[2] >= 0
    pool.release([5, 9, 2])
    assert pool.stats()["sink_rows_retired"] == 1
    # a prefix hit on block 5 keeps reading the row; two more first blocks need rows: the LRU one is evicted
    plan = pool.plan_step(np.array([3 * G + i for i in range(G)] + [4 * G + i for i in range(G)]), np.array([3, 4]))
    plan = pool.plan_step(np.array([7 * G]), np.array([3]))
    assert sorted(plan.flush_blocks.tolist()) == [3, 4]
    assert pool.block_row[5] == -1 and pool.block_row[3] >= 0 and pool.block_row[4] >= 0
    assert pool.stats()["sink_rows_free"] == 0 and pool.stats()["sink_rows_missed"] == 0
    pool.check_invariants()
    # block 3 gets a new owner (vLLM reused it): its stale row is dropped
    pool.release([3, 7])
    plan = pool.plan_step(np.array([3 * G]), np.array([3]))
    assert pool.block_row[3] == -1 and plan.block_to_slot[3] >= 0
    pool.check_invariants()
    # without prefix caching a finished request's row is freed at once
    nopc = SlotPool(8, G, fp16_sink=False, sink_rows=1, retire_sinks=False)
    nopc.plan_step(np.array([5 * G + i for i in range(G)]), np.array([5]))
    assert nopc.plan_step(np.array([6 * G]), np.array([5])).flush_rows.tolist() == [8 * G]
    nopc.release([5, 6])
    assert nopc.stats()["sink_rows_free"] == 1 and nopc.block_row[5] == -1
    nopc.check_invariants()
