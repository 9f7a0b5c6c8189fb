"""KV-cache spec for vLLM versions without ``AttentionBackend.customize_spec`` (0.23 / 0.26).

There the page size comes from the layer's ``FullAttentionSpec`` (block_size x heads x
(head + head_v) x dtype bytes); a uint8 spec that reports ``block_size x heads x cell`` bytes makes
vLLM allocate kvarn's smaller pages. The subclass is found by MRO (managed by FullAttentionManager)
and pickled to the engine core, which imports the installed plugin.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vllm.v1.kv_cache_interface import FullAttentionSpec


@dataclass(frozen=True, kw_only=True)
class KvarnFullAttentionSpec(FullAttentionSpec):
    kvarn_cell_bytes: int = 0  # bytes per token per KV head (108 for k4v2_g128 at head_dim 128)

    @property
    def real_page_size_bytes(self) -> int:
        return self.block_size * self.num_kv_heads * self.kvarn_cell_bytes

    @classmethod
    def merge(cls, specs):
        merged = super().merge(specs)
        cells = {s.kvarn_cell_bytes for s in specs}
        if len(cells) != 1:
            raise ValueError(f"kvarn layers of one KV cache group must share one cell size, got {sorted(cells)}")
        return replace(merged, kvarn_cell_bytes=cells.pop())
