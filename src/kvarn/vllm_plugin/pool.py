"""Bookkeeping of the fp16 sink/tail pool: which vLLM block lives in which pool slot.

Pure Python/NumPy (no vLLM import) so it is unit-tested directly. One :class:`SlotPool` serves all
layers of the (single) KV-cache group of a worker process; every layer owns pool tensors
``[num_slots, G, Hkv, D]`` indexed by the same slots.

Life of a block (G = tile length = vLLM block size):
  * first write into a block without a slot (or any write at offset 0: a new owner) -> gets a slot;
  * the block becomes full: if it is a request's first block (the sink) it stays (unless
    ``fp16_sink`` is False: then it is treated like any other block); otherwise it is
    queued and flushed (quantized into its record) at the start of the next step, by every layer,
    before that layer writes anything, so a slot freed by a flush can be reused in the same step;
  * its request finishes or is preempted (:meth:`SlotPool.release`): a partial block's slot is
    freed; with prefix caching on, a complete sink is *retired* (kept fp16 so a prefix-cache hit
    reuses it byte for byte) and a complete tile still waiting is flushed; with it off, nothing can
    read the block again and its slot is freed at once. Retired sinks are evicted (flushed) oldest
    first, only when no slot is free.
Invariant: a slot belongs to at most one block; no slot of a live block is handed out.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


class PoolExhausted(RuntimeError):
    pass


@dataclass
class StepPlan:
    """What every layer does this step.

    flush_blocks/flush_slots [F]: quantize pool slot -> record of block, before any write.
    write_rows [T]: row of the flattened pool ``[num_slots * G]`` for each token of slot_mapping
        (-1 for padding tokens). block_to_slot [num_blocks]: the map readers use after the flush.
    """

    flush_blocks: np.ndarray
    flush_slots: np.ndarray
    write_rows: np.ndarray
    block_to_slot: np.ndarray


class SlotPool:
    def __init__(
        self, num_slots: int, group: int, retire_sinks: bool = True, num_blocks: int = 1024, keep_fp16: bool = False,
        fp16_sink: bool = True,
    ):
        """fp16_sink: a request's first block stays fp16 while the request lives (KvarnConfig.sink == "fp16");
        False: it is flushed when complete, like every other block."""
        if num_slots < 1:
            raise ValueError("the fp16 pool needs at least one slot")
        self.num_slots = num_slots
        self.group = group
        self.retire_sinks = retire_sinks
        self.fp16_sink = fp16_sink
        self.keep_fp16 = keep_fp16  # debug: never flush (needs a slot per block); isolates quantization error
        self.block_slot = np.full(num_blocks, -1, dtype=np.int64)
        self.block_fill = np.zeros(num_blocks, dtype=np.int64)
        self.block_sink = np.zeros(num_blocks, dtype=bool)
        self.slot_block = np.full(num_slots, -1, dtype=np.int64)
        self.free: list[int] = list(range(num_slots - 1, -1, -1))
        self.retired: OrderedDict[int, None] = OrderedDict()
        self.pending_flush: OrderedDict[int, None] = OrderedDict()
        self.peak_used = 0

    # ---- helpers ------------------------------------------------------------------------
    def _grow(self, max_block: int) -> None:
        n = self.block_slot.shape[0]
        if max_block < n:
            return
        new = max(max_block + 1, 2 * n)
        self.block_slot = np.concatenate([self.block_slot, np.full(new - n, -1, dtype=np.int64)])
        self.block_fill = np.concatenate([self.block_fill, np.zeros(new - n, dtype=np.int64)])
        self.block_sink = np.concatenate([self.block_sink, np.zeros(new - n, dtype=bool)])

    def _free_slot_of(self, b: int) -> int:
        s = int(self.block_slot[b])
        self.block_slot[b] = -1
        self.block_fill[b] = 0
        self.block_sink[b] = False
        self.slot_block[s] = -1
        self.retired.pop(b, None)
        self.pending_flush.pop(b, None)
        return s

    def _take_slot(self, flush: list[tuple[int, int]]) -> int:
        if self.free:
            return self.free.pop()
        if self.retired:
            victim, _ = self.retired.popitem(last=False)  # least recently used sink
            s = int(self.block_slot[victim])
            flush.append((victim, s))
            self._free_slot_of(victim)
            return s
        raise PoolExhausted(
            f"kvarn fp16 pool exhausted ({self.num_slots} slots); raise max_num_seqs headroom "
            "or lower max_num_batched_tokens"
        )

    # ---- per step -------------------------------------------------------------------------
    def plan_step(self, slot_mapping: np.ndarray, first_blocks: np.ndarray) -> StepPlan:
        """slot_mapping [T] (block * G + offset, -1 = padding); first_blocks [B]: block_table[:, 0]."""
        g = self.group
        slot_mapping = np.asarray(slot_mapping, dtype=np.int64)
        valid = slot_mapping >= 0
        blocks = np.where(valid, slot_mapping // g, -1)
        offs = np.where(valid, slot_mapping % g, 0)
        if valid.any():
            self._grow(int(blocks.max()))
        first = {int(b) for b in np.asarray(first_blocks).reshape(-1) if b >= 0} if self.fp16_sink else set()
        if first:
            self._grow(max(first))

        # 1. flush what became full (or was released) since the last step
        flush: list[tuple[int, int]] = []
        for b in list(self.pending_flush):
            s = int(self.block_slot[b])
            if s >= 0:
                flush.append((b, s))
                self._free_slot_of(b)
                self.free.append(s)
        self.pending_flush.clear()

        for b in first:  # recently used sinks are the last to be evicted
            if b in self.retired:
                self.retired.move_to_end(b)

        # 2. slots for every written block; a write at offset 0 means a new owner
        if valid.any():
            vb, vo = blocks[valid], offs[valid]
            order = np.unique(vb)
            starts = {int(b) for b in vb[vo == 0]}
            maxoff = np.zeros(order.shape[0], dtype=np.int64)
            np.maximum.at(maxoff, np.searchsorted(order, vb), vo)
            for b, mo in zip(order.tolist(), maxoff.tolist()):
                s = int(self.block_slot[b])
                if s >= 0 and b in starts:
                    self.retired.pop(b, None)
                    self.pending_flush.pop(b, None)
                    self.block_fill[b] = 0
                if s < 0:
                    s = self._take_slot(flush)
                    self.block_slot[b] = s
                    self.slot_block[s] = b
                    self.block_fill[b] = 0
                self.block_sink[b] = b in first
                self.block_fill[b] = max(int(self.block_fill[b]), mo + 1)
                if self.block_fill[b] >= g and not self.block_sink[b] and not self.keep_fp16:
                    self.pending_flush[b] = None
        used = self.num_slots - len(self.free)
        self.peak_used = max(self.peak_used, used)

        rows = np.where(valid, self.block_slot[np.maximum(blocks, 0)] * g + offs, -1)
        fb = np.array([b for b, _ in flush], dtype=np.int64)
        fs = np.array([s for _, s in flush], dtype=np.int64)
        return StepPlan(fb, fs, rows, self.block_slot.copy())

    # ---- request end ----------------------------------------------------------------------
    def release(self, block_ids) -> None:
        """The blocks of a finished or preempted request (vLLM frees them now)."""
        g = self.group
        for b in block_ids:
            b = int(b)
            if b < 0 or b >= self.block_slot.shape[0] or self.block_slot[b] < 0:
                continue
            if self.block_fill[b] >= g and self.retire_sinks and not self.keep_fp16:
                # prefix caching: a later hit must find this complete block valid
                if b in self.pending_flush or b in self.retired:
                    continue
                if self.block_sink[b]:
                    self.retired[b] = None
                else:
                    self.pending_flush[b] = None
            else:  # partial, or no prefix cache can read it again: drop it
                self.free.append(self._free_slot_of(b))

    # ---- introspection --------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        held = int((self.slot_block >= 0).sum())
        return {
            "slots": self.num_slots,
            "free": len(self.free),
            "retired_sinks": len(self.retired),
            "pending_flush": len(self.pending_flush),
            "live": held - len(self.retired) - len(self.pending_flush),
            "peak_used": self.peak_used,
        }

    def check_invariants(self) -> None:
        held = np.nonzero(self.block_slot >= 0)[0]
        slots = self.block_slot[held]
        assert len(np.unique(slots)) == len(slots), "a slot is mapped to two blocks"
        assert all(self.slot_block[s] == b for b, s in zip(held, slots)), "reverse map broken"
        assert len(set(self.free)) == len(self.free), "a slot is free twice"
        assert not set(self.free) & set(slots.tolist()), "a held slot is on the free list"
        assert len(self.free) + len(held) == self.num_slots, "slots leaked"


class _Registry:
    """The pool of this worker process (kvarn serves exactly one full-attention KV-cache group)."""

    def __init__(self) -> None:
        self.pool: SlotPool | None = None
        self.cuda = None  # CudaStepState on CUDA (persistent step buffers, layer views for the flush)
        self.runner = None  # vLLM's model runner of this process (set by the _update_states patch)
        self.host_plan_checked = 0  # steps whose host-side layout was compared with the device tensors
        self.host_plan_mismatch = 0

    def cuda_state(self, cfg, device, num_blocks: int, max_tokens: int):
        """The process's CUDA step state (one per worker; later builders reuse it)."""
        if self.cuda is None:
            from kvarn.vllm_plugin.cuda_step import CudaStepState

            self.cuda = CudaStepState(cfg, device, num_blocks, max_tokens)
        return self.cuda

    def active(self) -> bool:
        return self.pool is not None

    def create(
        self, num_slots: int, group: int, retire_sinks: bool, keep_fp16: bool = False, num_blocks: int = 1024,
        fp16_sink: bool = True,
    ) -> SlotPool:
        if self.pool is None or (self.pool.num_slots, self.pool.group, self.pool.fp16_sink) != (
                num_slots, group, fp16_sink):
            self.pool = SlotPool(num_slots, group, retire_sinks, num_blocks=num_blocks, keep_fp16=keep_fp16,
                                 fp16_sink=fp16_sink)
        else:  # a builder made before the KV cache was sized (CUDA-graph profiling) saw fewer blocks
            self.pool._grow(num_blocks - 1)
        return self.pool

    def release(self, block_ids_per_group) -> None:
        if self.pool is None:
            return
        for ids in block_ids_per_group:
            self.pool.release(ids)


registry = _Registry()


def worker_pool_stats(worker=None) -> dict | None:
    """For ``LLM.collective_rpc``: this worker's pool statistics (None without a kvarn pool)."""
    if registry.pool is None:
        return None
    registry.pool.check_invariants()
    return {**registry.pool.stats(), "host_plan_checked": registry.host_plan_checked,
            "host_plan_mismatch": registry.host_plan_mismatch}
