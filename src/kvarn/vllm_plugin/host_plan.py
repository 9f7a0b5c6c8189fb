"""The step's token layout from vLLM's host-side arrays, so the builder never waits on the GPU.

vLLM computes the slot mapping on the GPU; reading it back (``.cpu()``) waits for the previous
step's forward and serializes vLLM's asynchronous scheduling (the CPU preparing step N+1 while the
GPU runs step N). The same numbers exist on the host: vLLM derives token positions from
``input_batch.num_computed_tokens_cpu`` and looks blocks up in the block table's CPU mirror, so

    pos  = num_computed[r] + (t - query_start_loc[r])            for token t of request r
    slot = block_table[r, pos // G] * G + pos % G

:func:`host_step` evaluates that with NumPy. The runner is reached through the pool registry (the
``_update_states`` patch records it). Feature detection, not versions: if an attribute is missing
it returns None and the caller reads the device tensors instead. The builder cross-checks the
result against the device slot mapping (always on CPU, the first steps on CUDA).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class HostStep:
    slot_mapping: np.ndarray  # [T] int64, -1 for padding tokens
    first_blocks: np.ndarray  # [B'] block_table[r, 0] of requests with tokens
    seq_lens: np.ndarray  # [B] int64 (0 for padded requests)


def host_step(runner, query_start_loc: np.ndarray, num_tokens: int, group: int) -> HostStep | None:
    """query_start_loc [B + 1] host ints of the step (B may include CUDA-graph padding: requests
    without tokens); num_tokens = T (padded). None if the runner lacks the host arrays."""
    ib = getattr(runner, "input_batch", None)
    comp = getattr(ib, "num_computed_tokens_cpu", None)
    try:
        bt = ib.block_table[0].block_table.np
    except (AttributeError, IndexError, TypeError):
        return None
    if comp is None or getattr(ib.block_table[0], "block_size", group) != group:
        return None
    qsl = np.asarray(query_start_loc, dtype=np.int64)
    qlen = np.diff(qsl)
    real = int(np.count_nonzero(qlen))
    if real and qlen[real:].any():  # tokens after a padded request: not vLLM's layout
        return None
    total = int(qsl[-1])
    req = np.repeat(np.arange(qlen.shape[0]), qlen)
    pos = np.asarray(comp, dtype=np.int64)[req] + (np.arange(total) - qsl[req])
    slots = np.full(num_tokens, -1, dtype=np.int64)
    slots[:total] = bt[req, pos // group].astype(np.int64) * group + pos % group
    seq = np.zeros(qlen.shape[0], dtype=np.int64)
    seq[:real] = np.asarray(comp, dtype=np.int64)[:real] + qlen[:real]
    return HostStep(slots, bt[:real, 0].astype(np.int64), seq)
