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
Sink rows (``sink_rows`` > 0, ``KVARN_SINK=token``): when a request's first block is flushed, its row 0
(position 0) is also copied into a sink row, one of ``sink_rows`` rows kept after the slots (flat pool row
``num_slots * G + r``), so readers see token 0 in fp16 and the rest of the tile as its record. The map readers
get marks such a block ``-2 - flat row`` (still < 0: a record). A sink row lives as long as its block's record:
it is dropped when the block gets a new owner, retired (kept for prefix-cache hits, evicted oldest first) when its
request ends with prefix caching on, freed at once with it off; if no row is free or retired the block simply
has none (its token 0 is read from the record).
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
        (-1 for padding tokens). block_to_slot [num_blocks]: the map readers use after the flush
        (slot >= 0; -1 record; <= -2 record whose position 0 is the fp16 flat pool row -2 - value).
    flush_rows [F]: flat pool row that receives the flushed tile's row 0 (its sink row), -1 none.
    """

    flush_blocks: np.ndarray
    flush_slots: np.ndarray
    write_rows: np.ndarray
    block_to_slot: np.ndarray
    flush_rows: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.flush_rows is None:
            self.flush_rows = np.full(self.flush_slots.shape[0], -1, dtype=np.int64)


class SlotPool:
    def __init__(
        self, num_slots: int, group: int, retire_sinks: bool = True, num_blocks: int = 1024, keep_fp16: bool = False,
        fp16_sink: bool = True, sink_rows: int = 0,
    ):
        """fp16_sink: a request's first block stays fp16 while the request lives (KvarnConfig.sink == "fp16");
        False: it is flushed when complete, like every other block. sink_rows: rows for the first token of
        flushed first blocks (KvarnConfig.token_sink; 0 = none), see the module doc."""
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
        self.sink_rows = sink_rows
        self.block_row = np.full(num_blocks, -1, dtype=np.int64)
        self.free_rows: list[int] = list(range(sink_rows - 1, -1, -1))
        self.retired_rows: OrderedDict[int, None] = OrderedDict()  # blocks whose request ended, oldest first
        self.rows_missed = 0  # first blocks flushed without a free row

    @property
    def total_slots(self) -> int:
        """Slots each layer's pool tensors hold: the sink/tail slots, then the sink-row slots."""
        return self.num_slots + -(-self.sink_rows // self.group)

    # ---- helpers ------------------------------------------------------------------------
    def _grow(self, max_block: int) -> None:
        n = self.block_slot.shape[0]
        if max_block < n:
            return
        new = max(max_block + 1, 2 * n)
        self.block_slot = np.concatenate([self.block_slot, np.full(new - n, -1, dtype=np.int64)])
        self.block_fill = np.concatenate([self.block_fill, np.zeros(new - n, dtype=np.int64)])
        self.block_sink = np.concatenate([self.block_sink, np.zeros(new - n, dtype=bool)])
        self.block_row = np.concatenate([self.block_row, np.full(new - n, -1, dtype=np.int64)])

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

    def _drop_row(self, b: int) -> None:
        r = int(self.block_row[b])
        if r >= 0:
            self.block_row[b] = -1
            self.retired_rows.pop(b, None)
            self.free_rows.append(r)

    def _take_row(self, b: int) -> int:
        """A sink row for first block b being flushed (-1 if none is free or retired)."""
        if not self.free_rows and self.retired_rows:
            self._drop_row(next(iter(self.retired_rows)))  # least recently used
        if not self.free_rows:
            self.rows_missed += 1
            return -1
        r = self.free_rows.pop()
        self.block_row[b] = r
        return r

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
        marks = self.fp16_sink or self.sink_rows > 0  # the pool needs to know first blocks
        first = {int(b) for b in np.asarray(first_blocks).reshape(-1) if b >= 0} if marks else set()
        if first:
            self._grow(max(first))

        for b in first:  # this step's first blocks are the last whose sink rows are evicted (below, in 1.)
            if b in self.retired_rows:
                self.retired_rows.move_to_end(b)

        # 1. flush what became full (or was released) since the last step; a first block gets its sink row
        flush: list[tuple[int, int]] = []
        rows_of: dict[int, int] = {}
        for b in list(self.pending_flush):
            s = int(self.block_slot[b])
            if s >= 0:
                if self.sink_rows and self.block_sink[b]:
                    rows_of[b] = self._take_row(b)
                    if b not in first and rows_of[b] >= 0:  # its request already ended (prefix caching)
                        self.retired_rows[b] = None
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
                    self._drop_row(b)  # a written record block has a new owner: its old sink row is stale
                self.block_sink[b] = b in first
                self.block_fill[b] = max(int(self.block_fill[b]), mo + 1)
                stays = self.block_sink[b] and self.fp16_sink
                if self.block_fill[b] >= g and not stays and not self.keep_fp16:
                    self.pending_flush[b] = None
        used = self.num_slots - len(self.free)
        self.peak_used = max(self.peak_used, used)

        rows = np.where(valid, self.block_slot[np.maximum(blocks, 0)] * g + offs, -1)
        fb = np.array([b for b, _ in flush], dtype=np.int64)
        fs = np.array([s for _, s in flush], dtype=np.int64)
        base = self.num_slots * g  # flat pool row of sink row 0
        fr = np.array([base + rows_of[b] if rows_of.get(b, -1) >= 0 else -1 for b, _ in flush], dtype=np.int64)
        b2s = self.block_slot.copy()
        if self.sink_rows:
            has = (self.block_row >= 0) & (b2s < 0)
            b2s[has] = -2 - (base + self.block_row[has])
        return StepPlan(fb, fs, rows, b2s, fr)

    # ---- request end ----------------------------------------------------------------------
    def release(self, block_ids) -> None:
        """The blocks of a finished or preempted request (vLLM frees them now)."""
        g = self.group
        for b in block_ids:
            b = int(b)
            if b < 0 or b >= self.block_slot.shape[0]:
                continue
            if self.block_row[b] >= 0:  # a flushed first block's sink row
                if self.retire_sinks:
                    self.retired_rows[b] = None
                    self.retired_rows.move_to_end(b)
                else:
                    self._drop_row(b)
            if self.block_slot[b] < 0:
                continue
            if self.block_fill[b] >= g and self.retire_sinks and not self.keep_fp16:
                # prefix caching: a later hit must find this complete block valid
                if b in self.pending_flush or b in self.retired:
                    continue
                if self.block_sink[b] and self.fp16_sink:
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
            "sink_rows": self.sink_rows,
            "sink_rows_free": len(self.free_rows),
            "sink_rows_retired": len(self.retired_rows),
            "sink_rows_missed": self.rows_missed,
        }

    def check_invariants(self) -> None:
        held = np.nonzero(self.block_slot >= 0)[0]
        slots = self.block_slot[held]
        assert len(np.unique(slots)) == len(slots), "a slot is mapped to two blocks"
        assert all(self.slot_block[s] == b for b, s in zip(held, slots)), "reverse map broken"
        assert len(set(self.free)) == len(self.free), "a slot is free twice"
        assert not set(self.free) & set(slots.tolist()), "a held slot is on the free list"
        assert len(self.free) + len(held) == self.num_slots, "slots leaked"
        with_row = np.nonzero(self.block_row >= 0)[0]
        rows = self.block_row[with_row]
        assert len(np.unique(rows)) == len(rows), "a sink row is mapped to two blocks"
        assert not set(self.free_rows) & set(rows.tolist()), "a held sink row is on the free list"
        assert len(self.free_rows) + len(rows) == self.sink_rows, "sink rows leaked"
        assert not (self.block_slot[with_row] >= 0).any(), "a block holds a slot and a sink row"
        assert set(self.retired_rows) <= set(with_row.tolist()), "a retired sink row has no block"


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
        fp16_sink: bool = True, sink_rows: int = 0,
    ) -> SlotPool:
        if self.pool is None or (self.pool.num_slots, self.pool.group, self.pool.fp16_sink, self.pool.sink_rows) != (
                num_slots, group, fp16_sink, sink_rows):
            self.pool = SlotPool(num_slots, group, retire_sinks, num_blocks=num_blocks, keep_fp16=keep_fp16,
                                 fp16_sink=fp16_sink, sink_rows=sink_rows)
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
