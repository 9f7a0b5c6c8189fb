"""Launch-shape policy of fused decode attention (decode_attention.py): split-K factor, warps per program, the
transposed record pass, pool programs per (request, KV head). Pure functions of static shapes (CUDA-graph safe),
fitted to H200 measurements quoted in each docstring; benchmarks record what ``decode_launch_shape`` returns.
"""

from __future__ import annotations

import functools

from kvarn.kernels._common import DECODE_WARPS


@functools.lru_cache(maxsize=4096)
def choose_num_splits(batch: int, num_kv_heads: int, max_blocks: int, sms: int, programs_per_sm: int = 4,
                      split_cost: float = 0.05, combine_cost: float = 0.5, tie: float = 0.03,
                      cap_full: bool = True) -> int:
    """Split-K factor S from static shapes only (CUDA-graph safe), by a wave model of the GPU.

    B*Hk*S programs run ``programs_per_sm`` at a time per SM (4 programs of 4 warps at maxnreg 128),
    so a launch takes ceil(B*Hk*S / (sms * programs_per_sm)) waves of ceil(max_blocks / S) tiles each
    (the kernel is latency-bound per tile). Cost in tile times: waves * tiles_per_split, plus
    ``combine_cost`` for the extra combine launch and ``split_cost`` per split (partials written and
    merged); the fewest splits within ``tie`` (3%) of the cheapest S win. Fitted to the H200 sweep
    (benchmarks/gpu/results/h200-decode-splits-2026-11-29): it picks the measured best at B=16/2.5K (S=4),
    B=32/8K (S=2), B=8/8K (S=8), B=64/2K (S=1), where the previous rule (fill 8 waves, >= 4 tiles per
    split) was up to 37% slower (S=5 at B=16/2.5K: 73.0 vs 53.1 us). Only S that are distinct after
    rounding tiles per split up are considered. max_blocks is the block table's width (static under
    CUDA graphs); the kernel splits each request's own tiles S ways, so contexts shorter than the
    table shrink every split alike instead of leaving the later splits empty.

    ``cap_full``: once B*Hk programs fill the GPU (>= ``programs_per_sm`` per SM) the model's wave
    rounding is not worth the splits: S <= 2 up to two waves, S = 1 beyond. Without the cap it chose
    S = 17 at B = 200-496 for a 67-tile table (max_model_len 8,464), 1.71-1.98x slower than S = 1 at
    1.1K context and 1.15x slower at full context on the H200 (``check_split_policy.py --wide 67``,
    2026-11-30), and its [B, Hq, 17, D] fp32 partials made vLLM's CUDA-graph memory estimate charge
    6.77 GiB of KV space instead of 0.37 (``diag_graph_memory.py``). S = 2 at B = 96 measured 1.11x
    faster than S = 1, hence the middle band."""
    base = batch * num_kv_heads
    slots = max(1, sms * programs_per_sm)
    max_s = max_blocks
    if cap_full and base >= slots:  # the GPU is full without splits: at most 2 (one to two waves), else none
        max_s = 2 if base < 2 * slots else 1
    costs = {1: float(-(-base // slots) * max_blocks)}
    for s in range(2, min(max_s, max_blocks) + 1):
        tps = -(-max_blocks // s)
        if -(-max_blocks // tps) == s:
            costs[s] = -(-(base * s) // slots) * tps + combine_cost + split_cost * s
    low = min(costs.values())
    return min(s for s, c in costs.items() if c <= low * (1 + tie))


# Registers per thread of a record-reading program by its warps, and the programs that then fit one SM
# (65,536 registers: 4 programs of 4 warps at 128, 6 of 2 at 168); the wave models count with the latter.
DECODE_REGS = {2: 168, 4: 128}
DECODE_PROGRAMS_PER_SM = {w: 65536 // (r * 32 * w) for w, r in DECODE_REGS.items()}
# 2-warp programs (transposed record pass) once a launch holds at least this many programs per SM (below, 4 warps):
# with the transposed pass 160 x 2,048 (9.7 per SM on 132 SMs) is 7% faster at 2 warps, 128 x 2,048 (7.8) 9% slower
WARPS2_MIN_PER_SM = 9


def choose_decode_warps(programs: int, sms: int, override: int = 0) -> int:
    """Warps per program of a record-reading decode launch of ``programs`` = B*Hk*S programs (static shapes:
    CUDA-graph safe); ``override`` 2 or 4 (``KVARN_DECODE_WARPS``) wins, 0 = by launch size.

    2 warps at 168 registers (6 programs per SM) once the launch holds >= 9 programs per SM, else 4 warps at 128
    (4 per SM); 2-warp programs run the transposed record pass (``choose_decode_swap``). A 2-warp program runs the
    same tile math with half the threads: each warp covers twice the MMA columns, and a record tile costs 3,330
    warp-instructions instead of 4,228 (offline sm_90 SASS, before the transposed pass). Ragged tails, fp16 sink,
    us per layer call on the H200 (2026-12-01, ``results/h200-warps-2026-12-01n``), 4 -> 2 warps:
    768 x 1,152 503.1 -> 480.9, 768 x 2,048 807.7 -> 772.8, 384 x 2,048 421.5 -> 401.5, 192 x 2,048 221.7 ->
    211.4, 1,024 x 1,152 661.0 -> 627.2; equal at 160 x 2,048 (199.9 / 199.5) and 256 x 2,048; slower where the
    launch is under ~8 programs per SM (128 x 2,048 152.8 -> 180.8, 32 x 8,192 142.1 -> 161.3). 1 warp, 8 warps,
    and 2 warps at 96 / 144 / 232 registers were slower at every large shape. With the transposed pass (same
    probe, ``results/h200-swap-2026-12-01o``) 2 warps also win at 160 x 2,048 (202.0 -> 187.7 us) and still lose
    at 128 x 2,048 (154.6 -> 169.2) and 128 x 4,096 (276.3 -> 297.6): the threshold moved from 10 to 9 per SM."""
    if override:
        return override
    return 2 if programs >= WARPS2_MIN_PER_SM * sms else 4


def splits_for_two_warps(batch: int, num_kv_heads: int, max_blocks: int, sms: int, splits: int,
                         combine_cost: float = 0.5, split_cost: float = 0.05, gain: float = 0.12) -> int:
    """Split-K factor of a single-token record launch given the 4-warp wave model's ``splits`` (choose_num_splits).
    When B*Hk*S programs stay under the 2-warp threshold (WARPS2_MIN_PER_SM per SM) although B*Hk >= 256: the
    smallest S that reaches it (2-warp programs, transposed record pass), or one more where that saves ``gain``
    (12%) of the tile times in the same wave model with 6 programs per SM (a launch ending in a part-filled wave
    wastes it), as long as each split keeps >= 8 of the table's tiles; otherwise ``splits``. The 4-warp model ties
    S = 1 and 2 there, but 2-warp programs fit 6 per SM, not 4. H200, uniform contexts, fp16 sink, us per layer
    call, 4-warp choice -> this choice (2026-12-01 08:21-08:27, ``results/h200-swap-2026-12-01o/``): 128 x 8,192
    525.2 -> 463.6 (S = 2), 128 x 32,768 1,995.1 -> 1,716.8 (S = 2), 140 x 8,192 645.9 -> 505.8 (S = 2), 100 x 4,096
    250.3 -> 234.5 (S = 2), 64 x 8,192 270.8 -> 240.4 (S = 3), 64 x 32,768 1,013.5 -> 856.7 (S = 3), 32 x 8,192
    143.4 -> 134.0 (S = 6; the smallest, 5, 147.6), 32 x 32,768 515.0 -> 442.8 (S = 6), 32 x 131,072 1,980.6 ->
    1,685.7 (S = 6). Contexts much shorter than the table pay for the splits: 64 x 1,152 in a 256-tile table 57.8
    -> 64.6 (S = 3), 128 x 1,152 103.5 -> 109.3 (S = 2) (vLLM's tables are as wide as max_model_len)."""
    base = batch * num_kv_heads
    need = -(-WARPS2_MIN_PER_SM * sms // base)
    if base * splits >= WARPS2_MIN_PER_SM * sms or base < 256 or need <= splits or max_blocks < 8 * need:
        return splits

    def cost(s: int) -> float:
        return -(-(base * s) // (DECODE_PROGRAMS_PER_SM[2] * sms)) * -(-max_blocks // s) + combine_cost + split_cost * s

    nxt = need + 1
    if max_blocks >= 8 * nxt and -(-max_blocks // -(-max_blocks // nxt)) == nxt and cost(nxt) < (1 - gain) * cost(need):
        return nxt
    return need


def choose_decode_swap(num_warps: int, override: str = "auto") -> bool:
    """Whether the record pass runs transposed (S^T = K^T q^T, O^T = V^T P^T: the tile's tokens on the MMA's M
    axis, the Hq/Hk query rows on its N axis, padded to 8 instead of 16); ``override`` "1" / "0"
    (``KVARN_DECODE_SWAP``) wins, "auto" = with 2-warp programs.

    Offline sm_90 SASS per record tile and warp: 1,665 -> 1,436 instructions at 2 warps (half the HMMAs, 202 -> 51
    register moves that rebuilt the padded q operand), 1,057 -> 982 at 4 warps (with spills at 128 registers).
    H200, ragged tails, us per layer call (2026-12-01, ``results/h200-swap-2026-12-01o``): 2 warps 768 x 1,152
    481.6 -> 450.1, 768 x 2,048 774.6 -> 709.7, 384 x 2,048 404.4 -> 373.8, 192 x 2,048 212.4 -> 199.7; 4 warps
    slower (128 x 8,192 521.6 -> 565.6, 32 x 8,192 143.3 -> 157.7, 16 x 2,560 37.6 -> 40.3)."""
    if override != "auto":
        return override == "1"
    return num_warps == 2


def choose_pool_splits(batch: int, num_kv_heads: int, sms: int) -> int:
    """Programs per (request, KV head) of the Gluon path's pool pass (each takes its share of the request's tiles,
    so the fp16 sink and the filling tail land in different programs): 2 while B*Hk programs are fewer than 2 per
    SM, else 1. H200, 2026-12-01 (``results/h200-gluon-2026-12-01q``, us per layer call with 1 / 2 programs):
    8 x 32,768 124.5 / 116.0, 32 x 8,192 111.7 / 109.1, 64 x 8,192 196.7 / 198.9, 256 x 8,192 731.8 / 725.5,
    768 x 1,152 455.7 / 481.6."""
    return 2 if batch * num_kv_heads < 2 * sms else 1


# The Gluon path's split rule (its programs are always 2 warps at 168 registers, 6 per SM). From B*Hk = 256 on: the
# Triton kernel's rule with one more split only where it saves 15% in the wave model (12% there). Below: the wave model
# with 6 programs per SM (the Triton kernel's counts 4-warp programs, 4 per SM) where B*Hk >= 64 and its splits keep
# >= 8 tiles each (shorter splits pay the per-program prologue, q rotation and merge; as splits_for_two_warps), else
# the Triton kernel's rule. H200, Qwen3-8B layer, CUDA-graph us per layer call, merge in the launch, the previous
# choice -> this one (results/h200-merge-2026-12-01t, calls 3-4, two runs each): 16 x 8,192 S = 4 67.7 / 68.1 -> 6
# 55.3 / 55.4; 16 x 32,768 4 240.3 / 240.3 -> 6 172.4 / 172.4; 32 x 8,192 6 97.7 / 97.6 -> 5 93.7 / 94.2; 8 x 32,768
# 8 99.7 / 99.5 -> 12 95.6 / 95.7; 12 x 8,192 11 48.8 / 49.2 -> 8 46.4 / 46.5; 12 x 32,768 11 142.1 / 142.0 -> 8
# 131.9 / 132.3; 24 x 8,192 8 78.7 / 79.0 -> 4 74.8 / 75.2; 24 x 32,768 8 247.4 / 245.2 -> 4 247.6 / 247.6. Left to
# the previous rule because the 6-per-SM choice was slower: 16 x 2,048 (6 splits of 3 tiles: 29.3 / 29.7 vs 25.2 /
# 25.7), 8 x 8,192 (11 of 6: 38.0 / 38.4 vs 35.6 / 36.2), 4 x 8,192 (22 of 3: 26.0 / 26.2 vs 25.3 / 25.8),
# 1 x 131,072 (94: 64.0 / 64.2 vs 61.8 / 62.2); 4 x 32,768 equal (57.6 / 57.7 vs 57.7 / 57.8). Kept at B*Hk >= 256:
# 32 x 32,768 and 32 x 131,072 (S = 6 beat 5: 320.4-324.6 vs 326.1-326.2, 1,322-1,346 vs 1,351-1,365), 64 x 8,192 and
# 64 x 32,768 (S = 3), 128 x 8,192 and 100 x 4,096 (S = 2).
GLUON_PROGRAMS_PER_SM = 6
GLUON_NEXT_SPLIT_GAIN = 0.15


def decode_launch_shape(groups: int, num_kv_heads: int, max_blocks: int, sms: int, num_splits: int | None = None,
                        num_warps: int | None = None, all_pool: bool = False, tpr: int = 1,
                        gluon: bool = False) -> tuple[int, int]:
    """(split-K factor S, warps per program) of a decode launch as ``kvarn_decode_attention`` runs it: ``groups``
    programs per KV head and split (the batch, or its token groups when ``tpr`` > 1), a ``max_blocks``-wide block
    table, ``sms`` SMs; None = chosen (choose_num_splits, then splits_for_two_warps, then choose_decode_warps), a
    value = kept (S clipped to 1..max_blocks and to the splits that ceil-divided tiles per split leave non-empty).
    ``gluon``: the launch runs the Gluon path (decode_gluon.gluon_applies): its own split rule (GLUON_PROGRAMS_PER_SM;
    the warps returned are then the Triton kernel's, unused). Benchmarks record this, so a reported S is the one that
    ran."""
    if tpr > 1:
        num_splits = 1
    elif num_splits is None and gluon and not all_pool:
        base = groups * num_kv_heads
        if base < 256:
            num_splits = choose_num_splits(groups, num_kv_heads, max_blocks, sms)
            wide = choose_num_splits(groups, num_kv_heads, max_blocks, sms, programs_per_sm=GLUON_PROGRAMS_PER_SM)
            if base >= 64 and -(-max_blocks // wide) >= 8:
                num_splits = wide
        else:
            num_splits = splits_for_two_warps(groups, num_kv_heads, max_blocks, sms,
                                              choose_num_splits(groups, num_kv_heads, max_blocks, sms),
                                              gain=GLUON_NEXT_SPLIT_GAIN)
    elif num_splits is None:
        num_splits = choose_num_splits(groups, num_kv_heads, max_blocks, sms)
        if num_warps is None and not all_pool and not DECODE_WARPS:  # 2-warp programs where splits reach them
            num_splits = splits_for_two_warps(groups, num_kv_heads, max_blocks, sms, num_splits)
    num_splits = max(1, min(int(num_splits), max_blocks))
    num_splits = -(-max_blocks // -(-max_blocks // num_splits))
    if num_warps is None:
        num_warps = 4 if all_pool or tpr > 1 else choose_decode_warps(groups * num_kv_heads * num_splits, sms,
                                                                       DECODE_WARPS)
    return num_splits, num_warps
