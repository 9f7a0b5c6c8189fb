"""CUDA-graph-safe step state of the kvarn backend (no vLLM import; used by the metadata builder on CUDA).

A full CUDA graph of a decode step replays the kernels it captured with the tensor addresses it
captured, and none of the Python around them. So on CUDA:

* the per-step tensors every layer reads (``block_to_slot [num_blocks]`` int32 and ``write_rows [T]``
  int64) live in persistent device buffers that :meth:`CudaStepState.stage` overwrites in place;
* the flush (quantizing complete pool tiles into their records), whose size varies per step, runs
  here in the builder, before the forward and outside any graph: one launch of
  :func:`kvarn.kernels.flush_tiles_layers` for all layers of the step;
* every layer registers its ``(LayerCache, records)`` pair (:meth:`register`) the first time it runs,
  so the builder can reach every layer's pool and page. A layer that never ran has nothing to flush.

Stream order makes it safe: the builder's copies and flush are enqueued after the previous step's
forward and before this step's.
"""

from __future__ import annotations

import numpy as np
import torch

from kvarn.config import KvarnConfig


def to_device(x: np.ndarray, device, dtype=None) -> torch.Tensor:
    """Host array -> device tensor without waiting for the GPU: pinned staging, non-blocking copy
    (PyTorch's pinned-memory allocator keeps the staging block until the copy has run)."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if dtype is not None:
        t = t.to(dtype)
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class CudaStepState:
    def __init__(self, cfg: KvarnConfig, device, num_blocks: int, max_tokens: int):
        self.cfg = cfg
        self.device = torch.device(device)
        self.b2s = torch.full((max(1, num_blocks),), -1, dtype=torch.int32, device=self.device)
        self.rows = torch.full((max(1, max_tokens),), -1, dtype=torch.int64, device=self.device)
        self.empty = torch.empty(0, dtype=torch.int64, device=self.device)
        self.layers: dict[str, tuple] = {}
        self.warm = False

    def warm_up(self) -> None:
        """Compile the flush kernel before serving, on a scratch tile with the real tensors' strides and
        layer count:
        otherwise Triton's JIT compiles it at the first complete tile and every request of that
        step stalls for seconds (the likely cause of the first-level TPOT outlier in
        examples/gpu_h200, which ran before this warm-up existed).
        A no-op until a layer has registered, after the first success, and inside a graph capture."""
        if self.warm or not self.layers or (self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            return
        from kvarn.kernels import flush_tiles_layers
        from kvarn.kernels.flush import flush_warps

        cache, records = next(iter(self.layers.values()))
        gen = torch.Generator(device=self.device).manual_seed(0)
        pk = torch.randn(cache.pool_k[:1].shape, generator=gen, device=self.device).to(cache.pool_k.dtype)
        pv = torch.randn(cache.pool_v[:1].shape, generator=gen, device=self.device).to(cache.pool_v.dtype)
        rec = torch.empty_like(records[:1])
        zero = torch.zeros(1, dtype=torch.int32, device=self.device)
        # as many layers as the real flush: Triton specializes the layer count when it is 1; and every warp count
        # the launcher picks (small and large launches differ; one compiled variant each): on the H200 the 4-warp
        # variant of the first large flush still compiled while serving (jit_monitor, 2026-11-30 17:13)
        nl = len(self.layers)
        rows = torch.full((1,), -1, dtype=torch.int32, device=self.device) if self.cfg.token_sink else None
        for warps in sorted({flush_warps(self.cfg, few=True), flush_warps(self.cfg, few=False)}):
            flush_tiles_layers([pk] * nl, [pv] * nl, [rec] * nl, zero, zero, zero, self.cfg, num_warps=warps,
                               rows=rows)
        self.warm = True

    def register(self, name: str, cache, records: torch.Tensor) -> None:
        """cache: the layer's LayerCache; records uint8 [num_blocks, Hkv, R] (its vLLM page)."""
        self.layers[name] = (cache, records)

    def stage(self, block_to_slot: np.ndarray, write_rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy the step's maps into the persistent buffers -> (block_to_slot [NB] int32, write_rows [T] int64)."""
        nb = block_to_slot.shape[0]
        if nb > self.b2s.shape[0]:  # only before graphs exist (the pool grows to the final block count early)
            self.b2s = torch.full((nb,), -1, dtype=torch.int32, device=self.device)
        self.b2s[:nb].copy_(to_device(block_to_slot, self.device, torch.int32))
        t = write_rows.shape[0]
        if t > self.rows.shape[0]:
            self.rows = torch.full((t,), -1, dtype=torch.int64, device=self.device)
        rows = self.rows[:t]
        rows.copy_(to_device(write_rows, self.device, torch.int64))
        return self.b2s, rows

    def capture_rows(self, num_tokens: int) -> torch.Tensor:
        """write_rows for CUDA-graph capture: the persistent buffer, all -1 (dummy requests write nothing)."""
        if num_tokens > self.rows.shape[0]:
            self.rows = torch.full((num_tokens,), -1, dtype=torch.int64, device=self.device)
        rows = self.rows[:num_tokens]
        rows.fill_(-1)
        return rows

    def flush(self, layer_names, blocks: np.ndarray, slots: np.ndarray, rows: np.ndarray | None = None) -> int:
        """Quantize pool slot -> record of block for every registered layer of layer_names (one launch
        when the layers' tensors share shape and strides); rows [F]: flat pool row keeping the tile's row 0
        (-1 none; sink "token"). Returns the number of tiles encoded."""
        if slots.shape[0] == 0:
            return 0
        views = [self.layers[n] for n in layer_names if n in self.layers]
        if not views:
            return 0
        from kvarn.kernels import flush_tiles, flush_tiles_layers

        nl, nf = len(views), slots.shape[0]
        s = to_device(slots, self.device, torch.int32)
        b = to_device(blocks, self.device, torch.int32)
        r = to_device(rows, self.device, torch.int32) if self.cfg.token_sink and rows is not None else None
        layers = torch.arange(nl, dtype=torch.int32, device=self.device).repeat_interleave(nf)
        try:
            flush_tiles_layers([c.pool_k for c, _ in views], [c.pool_v for c, _ in views], [rec for _, rec in views],
                               layers, s.repeat(nl), b.repeat(nl), self.cfg, rows=None if r is None else r.repeat(nl))
        except ValueError:  # layers whose tensors differ in shape or strides: one launch each
            for c, rec in views:
                flush_tiles(c.pool_k, c.pool_v, rec, s, b, self.cfg, rows=r)
        return nl * nf
