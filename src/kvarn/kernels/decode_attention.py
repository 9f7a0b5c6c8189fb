"""Fused paged decode attention over a kvarn cache (packed tiles + fp16 pool rows): the launcher.

q [B, Hq, D] is rotated (q H, times scale * log2 e) inside the Triton program (decode_kernel.py,
head_dim <= 128; here for 256), which walks each request's tiles, reading records (dequantized in registers, never
materialized) and fp16 pool rows (sink, tail, unflushed blocks), with an fp32 online softmax and
GQA (all query heads of a KV head in one program). Split-K (flash-decoding) is chosen from static
shapes when B*Hk programs would leave SMs idle: each split writes its unnormalized accumulator,
max and sum, and _combine_kernel merges them (log-sum-exp). The output is un-rotated (o_rot H)
and stored in q's dtype (or into ``out``) by the last kernel: one launch per call without split-K,
two with it. All launches are CUDA-graph safe (no host sync, shapes only).
"""

from __future__ import annotations

import functools
import math

import torch
import triton

from kvarn.config import TOKENS_PER_PROGRAM_CHOICES, KvarnConfig
from kvarn.kernels._common import (ACT_DTYPES, DECODE_AHEAD, DECODE_ASM, DECODE_GLUON, DECODE_POOL_BN,
                                   DECODE_PREFETCH, DECODE_ROTF, DECODE_SWAP, DECODE_TRIM, DECODE_WARPS, INTERPRET,
                                   LOG2E, check, check_cache, hadamard, hadamard_factor_signs, hadamard_signs,
                                   layout_constexprs, num_sms, prefetch_lanes)
from kvarn.kernels.decode_gluon import gluon_applies, gluon_record_partials
from kvarn.kernels.decode_gluon_pool import _rotate_q_kernel
from kvarn.kernels.decode_kernel import _combine_kernel, _kvarn_decode_kernel


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


# The Gluon path's pool pass (NOREC programs of the Triton kernel; latency-bound: a few dependent loads per program):
# warps per program, and whether each chunk's V rows load together with its K rows. Module constants so a probe can
# A/B them (benchmarks/gpu/probe_gluon_parts.py --pool-variants).
POOL_PASS_WARPS = 4
POOL_PASS_EARLY_V = True
# The Gluon path's pool tiles read by pool programs inside the Gluon launch (decode_gluon_pool.py) instead of by the
# Triton pool pass before it; rows per pool chunk there (32; 64 was 2-8% slower at four of five shapes and 3% faster
# at 8 x 32,768 on the H200 before the in-kernel q rotation, with which it takes 244 registers: 4 programs per SM).
# H200, CUDA-graph us per layer call, Triton pool pass first -> pool programs after the record splits (both with a
# rotate-q launch; results/h200-poolfuse-2026-12-01s, call 4): 32 x 8,192 103.0 / 104.5 -> 100.3 / 99.7,
# 128 x 8,192 352.7 / 353.5 -> 325.7 / 327.4, 256 x 8,192 681.1 / 682.6 -> 641.0 / 661.7, 768 x 1,152 434.5 / 434.2
# -> 429.6 / 430.2, 8 x 32,768 108.2 / 108.3 -> 102.3 / 102.2.
GLUON_POOL_FUSED = True
GLUON_POOL_BN = 32
# Fused path: q rotated inside every Gluon program (a fast Walsh-Hadamard transform by lane shuffles) instead of by a
# launch of its own before it (decode_gluon_pool._rotate_q_kernel). Same call, with -> without the launch (call 6):
# 32 x 8,192 101.8 / 102.7 -> 100.1 / 100.6, 768 x 1,152 436.8 / 437.0 -> 431.5 / 431.2, 8 x 32,768 106.2 / 105.8 ->
# 104.2 / 103.9, 256 x 8,192 660.3 / 659.8 -> 657.5 / 656.4, 128 x 8,192 336.3 / 336.5 -> 334.5 / 340.1.
GLUON_QROT = True
# The split-K combine loads every partial of a row at once (up to this many splits; beyond, one per loop step):
# 5.3 -> 3.5 us at 32 x 8,192, 14.0 -> 11.9 at 768 x 1,152 (H200, results/h200-poolfuse-2026-12-01s, call 3)
COMBINE_ONE_LOAD_MAX = 32


def _combine_sp(splits: int) -> int:
    """The combine's SP constexpr: next_pow2(splits) when one load serves (<= COMBINE_ONE_LOAD_MAX), else 0."""
    return triton.next_power_of_2(splits) if splits <= COMBINE_ONE_LOAD_MAX else 0


def decode_launch_shape(groups: int, num_kv_heads: int, max_blocks: int, sms: int, num_splits: int | None = None,
                        num_warps: int | None = None, all_pool: bool = False, tpr: int = 1) -> tuple[int, int]:
    """(split-K factor S, warps per program) of a decode launch as ``kvarn_decode_attention`` runs it: ``groups``
    programs per KV head and split (the batch, or its token groups when ``tpr`` > 1), a ``max_blocks``-wide block
    table, ``sms`` SMs; None = chosen (choose_num_splits, then splits_for_two_warps, then choose_decode_warps), a
    value = kept (S clipped to 1..max_blocks and to the splits that ceil-divided tiles per split leave non-empty).
    Benchmarks record this, so a reported S is the one that ran."""
    if tpr > 1:
        num_splits = 1
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


def kvarn_decode_attention(
    q: torch.Tensor, kv_cache: torch.Tensor, pool_k: torch.Tensor, pool_v: torch.Tensor,
    block_to_slot: torch.Tensor, block_table: torch.Tensor, seq_lens: torch.Tensor, scale: float,
    cfg: KvarnConfig, num_splits: int | None = None, block_n: int | None = None, num_warps: int | None = None,
    pool_scale: tuple[float, float] = (1.0, 1.0), out: torch.Tensor | None = None,
    num_stages: int | None = None, maxnreg: int | None | str = "auto", all_pool: bool = False, min_q_rows: int = 4,
    prefetch: int | None = None, ahead: int | None = None, tokens_per_program: int = 1,
    pool_block_n: int | None = None, trim: bool | None = None, rotate_factored: bool | None = None,
    swap_ab: bool | None = None, gluon: bool | None = None, pool_splits: int | None = None,
) -> torch.Tensor:
    """Decode attention of one layer: q [B, Hq, D] (original frame, bf16/fp16) -> [B, Hq, D] in q.dtype.

    kv_cache uint8 [NB, Hk, R]; pool_k/pool_v [slots, G, Hk, D] rotated rows (fp16/bf16, or fp8
    with ``pool_scale``); block_to_slot int32 [NB] (-1 = record); block_table int32 [B, M];
    seq_lens int32 [B] (>= 1, including the current token, already in the cache).
    num_splits None = automatic (split-K when B*Hk leaves SMs idle and the table is long: ``choose_num_splits``;
    with num_warps None, then ``splits_for_two_warps``, which splits a mid-sized batch into 2-warp programs).
    Tuning (defaults = fastest in the H200 sweep): block_n = G (tokens per step; also sets pool_block_n when
    that is None), num_warps None = ``choose_decode_warps`` for single-token record launches (2 or 4;
    ``KVARN_DECODE_WARPS`` overrides), else 4,
    num_stages 1 (records) / 2 (all_pool), maxnreg "auto" = ``DECODE_REGS[num_warps]`` (records; None = the
    compiler's choice),
    min_q_rows 4 (query rows per program: the Hq/Hk heads padded to max(min_q_rows, next pow2); Triton
    pads the MMA itself, so the fp32 score/softmax/accumulator work runs on 4 rows, not 16: 1.15-1.21x
    at every shape probed on the H200, 2026-11-29, against the old padding to 16).
    prefetch N (None = ``KVARN_DECODE_PREFETCH``, default 1; 0 = off): each record tile first asks L2 for
    the record N tiles ahead (one ``prefetch.global.L2`` per 128-byte line).
    ahead A (None = ``KVARN_DECODE_AHEAD``, default 2; 0 = off): the record loop's dependent loads run ahead
    of the tile that uses them: A=1 block ids two tiles and pool-map entries one tile ahead, A=2 also the
    K scale vectors one tile ahead. Both defaults: 1.05-1.16x per layer call at five burst shapes and
    1.02x / 1.05x on burst A end to end, measured with the two settings side by side and then on swapped
    GPUs (H200, 2026-11-30, benchmarks/gpu/results/h200-ahead-2026-11-30c/).
    pool_block_n P (None = ``KVARN_DECODE_POOL_BN``, default 64; G = off): a pool tile (sink, tail, unflushed
    block) is read in chunks of P rows, only the chunks holding valid rows, so a partly filled tail costs its
    rows: 0.5-2.6% faster per layer call at five burst shapes with ragged tails, either sink mode (32: up to 4%
    faster with the token sink at B >= 384, 6% slower at B=16; H200, 2026-12-01, results/h200-poolbn-2026-12-01k).
    trim (None = ``KVARN_DECODE_TRIM``, default on): a pool tile at either end of a program's tile range (the
    fp16 sink first, the filling tail last) skips the record pass instead of running it masked.
    rotate_factored (None = ``KVARN_DECODE_ROTF``, default on): the in-kernel rotations of q and the output as two
    16-wide products (H_D = H_m (x) H_16) instead of one [D, D] operand per program.
    gluon (None = ``KVARN_DECODE_GLUON``, default on): where ``decode_gluon.gluon_applies``, the
    record tiles are read by the Gluon kernel (cp.async staging a tile ahead) and the fp16 pool tiles by pool
    programs of the same launch into ``pool_splits`` more split partials, every program rotating q itself; the
    split-K combine merges them (two launches; GLUON_POOL_FUSED / GLUON_QROT: the earlier forms). pool_splits None =
    ``choose_pool_splits``.
    swap_ab (None = ``KVARN_DECODE_SWAP``, default: with 2-warp programs, ``choose_decode_swap``): the record pass
    transposed, S^T = K^T q^T and O^T = V^T P^T, so the tile's tokens fill the MMA's M axis and the Hq/Hk query
    rows its N axis (8 wide, not 16).
    all_pool=True: every block is a pool slot (fp16/bf16/fp8
    cache without records, the benchmark baselines); fp8 pools require it.
    tokens_per_program T > 1 (chunked-prefill continuations): q [P*T, Hq, D] holds P groups of T query
    tokens, each group of one request (block_table [P, M]); seq_lens int32 [P*T] is each token's causal
    length (0 = a padding row, its output is left unwritten); one program per (group, KV head) reads each
    tile once for all T tokens. No split-K, no all_pool.
    """
    check(q.dim() == 3 and q.shape[2] == cfg.head_dim,
          f"q must be [B, Hq, {cfg.head_dim}], got {tuple(q.shape)}")
    check(q.dtype in ACT_DTYPES or q.dtype == torch.float32, f"q dtype must be fp16/bf16/fp32, got {q.dtype}")
    fp8 = pool_k.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
    check(not fp8 or all_pool, "fp8 pools are only supported with all_pool=True (baseline path)")
    if fp8:  # baseline path: the whole cache lives in an fp8 pool
        check(kv_cache.dim() == 3 and kv_cache.dtype == torch.uint8, "kv_cache must be uint8 [NB, Hk, R]")
        hk = kv_cache.shape[1]
    else:
        _, hk = check_cache(kv_cache, pool_k, pool_v, block_to_slot, cfg)
    bsz, hq, d = q.shape
    check(hq % hk == 0 and 1 <= hq // hk <= 64, f"Hq={hq} must be a multiple of Hk={hk} (GQA ratio <= 64)")
    tpr = int(tokens_per_program)
    check(tpr in TOKENS_PER_PROGRAM_CHOICES and (tpr == 1 or not all_pool),
          f"tokens_per_program must be one of {TOKENS_PER_PROGRAM_CHOICES} (and 1 with all_pool), "
          f"got {tokens_per_program}")
    check(bsz % tpr == 0, f"q's {bsz} rows must be a multiple of tokens_per_program={tpr}")
    groups = bsz // tpr
    check(block_table.dtype == torch.int32 and block_table.dim() == 2 and block_table.shape[0] == groups,
          f"block_table must be int32 [{groups}, max_blocks], got {block_table.dtype} {tuple(block_table.shape)}")
    check(block_table.stride(1) == 1, "block_table rows must be contiguous")
    check(seq_lens.dtype == torch.int32 and seq_lens.shape == (bsz,),
          f"seq_lens must be int32 [{bsz}], got {seq_lens.dtype} {tuple(seq_lens.shape)}")
    g = cfg.group
    bn = block_n or g
    check(g % bn == 0 and bn >= 16, f"block_n must divide G={g} and be >= 16, got {bn}")
    pbn = pool_block_n or block_n or min(DECODE_POOL_BN or g, g)
    check(g % pbn == 0 and pbn >= 16,
          f"pool_block_n (else block_n, else KVARN_DECODE_POOL_BN) must divide G={g} and be >= 16, got {pbn}")
    qpk = hq // hk
    check(min_q_rows in (1, 2, 4, 8, 16), f"min_q_rows must be one of 1, 2, 4, 8, 16, got {min_q_rows}")
    qp = max(min_q_rows, triton.next_power_of_2(qpk * tpr))
    prefetch = DECODE_PREFETCH if prefetch is None else prefetch
    check(prefetch in (0, 1, 2, 3, 4), f"prefetch (tiles ahead, 0 = off) must be 0-4, got {prefetch}")
    ahead = DECODE_AHEAD if ahead is None else ahead
    check(ahead in (0, 1, 2), f"ahead must be 0 (off), 1 (ids) or 2 (ids and K scales), got {ahead}")
    check(pool_splits in (None, 1, 2, 4), f"pool_splits must be None, 1, 2 or 4, got {pool_splits}")
    max_blocks = block_table.shape[1]
    num_splits, num_warps = decode_launch_shape(groups, hk, max_blocks, num_sms(q.device), num_splits, num_warps,
                                                all_pool, tpr)
    check(num_warps in (1, 2, 4, 8), f"num_warps must be one of 1, 2, 4, 8, got {num_warps}")
    if maxnreg == "auto":
        maxnreg = DECODE_REGS.get(num_warps)

    out_dtype = q.dtype
    if out is not None:
        check(out.shape == q.shape and out.dtype in (*ACT_DTYPES, torch.float32) and out.stride(2) == 1,
              f"out must be {tuple(q.shape)} fp16/bf16/fp32 with a contiguous last dim, got {out.dtype} "
              f"{tuple(out.shape)} strides {out.stride()}")
        out_dtype = out.dtype
    rot = d <= 128  # rotations inside the kernel ([D, D] +-1 operand); head_dim 256 rotates here
    if rot:
        q_in = q if q.stride(2) == 1 else q.contiguous()
        q_mult = scale * LOG2E / math.sqrt(d)
        o = out if out is not None else torch.empty(bsz, hq, d, dtype=out_dtype, device=q.device)
    else:
        h32 = hadamard(d, torch.float32, q.device)
        q_in = torch.matmul(q.float(), h32).mul_(scale * LOG2E)
        q_mult = 1.0
        o = torch.empty(bsz, hq, d, dtype=torch.float32, device=q.device)
    rf = rot and (DECODE_ROTF if rotate_factored is None else bool(rotate_factored))
    sgn = hadamard_factor_signs(d, q.device) if rf else hadamard_signs(d, torch.bfloat16, q.device)
    kvh = kv_cache.view(torch.float16) if not fp8 else kv_cache
    bf16_pool = pool_k.dtype == torch.bfloat16
    common = dict(HK=hk, QPK=qpk, QP=qp, BN=bn, PBN=pbn, POOL_BF16=bf16_pool, UPCAST=INTERPRET and bf16_pool,
                  IUP=INTERPRET, ALL_POOL=bool(all_pool), TPR=tpr, ROT=rot, ASM=DECODE_ASM, num_warps=num_warps,
                  PREF=prefetch if DECODE_ASM else 0, PL=prefetch_lanes(cfg),
                  AHD=ahead, TS=cfg.token_sink, TRIM=DECODE_TRIM if trim is None else bool(trim), RF=rf,
                  SW=choose_decode_swap(num_warps, DECODE_SWAP) if swap_ab is None else bool(swap_ab),
                  **layout_constexprs(cfg))
    # records: compute-bound, no software pipelining; pool-only: 2 stages (H200 sweep, docs/gpu.md)
    common["num_stages"] = num_stages if num_stages is not None else (2 if all_pool and d <= 128 else 1)
    if maxnreg is not None and not all_pool and not INTERPRET:
        common["maxnreg"] = maxnreg
    args = (q_in, sgn, sgn, kv_cache, kvh, pool_k, pool_v, block_to_slot, block_table, seq_lens)
    strides = (q_in.stride(0), q_in.stride(1), kv_cache.stride(0), pool_k.stride(0), pool_k.stride(1),
               pool_k.stride(2), block_table.stride(0))
    scales = (q_mult, 1.0 / math.sqrt(d), float(pool_scale[0]), float(pool_scale[1]))
    if (DECODE_GLUON if gluon is None else gluon) and gluon_applies(cfg, qpk, tpr, all_pool, q.device):
        # record splits into partial slots 0..S-1 and the pool tiles (and the token sink's row) into S..S+P-1, then
        # the split-K combine. Default: one Gluon launch for both (pool programs after the record splits), each
        # program rotating q itself; or q rotated by its own launch first (GLUON_QROT off); or the Triton kernel's
        # pool pass before the Gluon record pass (GLUON_POOL_FUSED off)
        ps = choose_pool_splits(bsz, hk, num_sms(q.device)) if pool_splits is None else pool_splits
        part = torch.empty(bsz, hq, num_splits + ps, d, dtype=torch.float32, device=q.device)
        ml = torch.empty(bsz, hq, num_splits + ps, 2, dtype=torch.float32, device=q.device)
        if GLUON_POOL_FUSED and GLUON_QROT:
            gluon_record_partials(q_in, kv_cache, block_to_slot, block_table, seq_lens, part, ml, num_splits,
                                  cfg.token_sink, pool_k, pool_v, ps, pool_scale, GLUON_POOL_BN, q_mult)
        else:  # the rotated, scaled q rows written first: by a launch of their own or by the Triton pool pass
            qs = torch.empty(bsz, hq, d, dtype=torch.float32, device=q.device)
            if GLUON_POOL_FUSED:
                _rotate_q_kernel[(bsz,)](q_in, sgn, qs, q_in.stride(0), q_in.stride(1), q_mult, HQ=hq,
                                         QP=max(16, triton.next_power_of_2(hq)), D=d, IUP=INTERPRET, RF=rf,
                                         num_warps=4)
                gluon_record_partials(qs, kv_cache, block_to_slot, block_table, seq_lens, part, ml, num_splits,
                                      cfg.token_sink, pool_k, pool_v, ps, pool_scale, GLUON_POOL_BN)
            else:  # the Triton kernel's pool pass first, its own register cap (128 at 4 warps)
                pool = dict(common, num_warps=POOL_PASS_WARPS, SW=False, PVE=POOL_PASS_EARLY_V,
                            maxnreg=DECODE_REGS.get(POOL_PASS_WARPS))
                _kvarn_decode_kernel[(bsz * hk, ps)](
                    *args, part[:, :, num_splits:], ml[:, :, num_splits:], *strides, part.stride(0),
                    part.stride(1), part.stride(2), *scales, SPLIT=True, NOREC=True, qs_ptr=qs, **pool)
                gluon_record_partials(qs, kv_cache, block_to_slot, block_table, seq_lens, part, ml, num_splits,
                                      cfg.token_sink, pool_k, pool_v)
        _combine_kernel[(bsz * hk,)](part, ml, sgn, o, num_splits + ps, o.stride(0), o.stride(1), 1.0 / math.sqrt(d),
                                     HK=hk, QPK=qpk, QP=qp, D=d, ROT=rot, IUP=INTERPRET, RF=rf,
                                     SP=_combine_sp(num_splits + ps), num_warps=4)
        return o
    if num_splits == 1:
        _kvarn_decode_kernel[(groups * hk, 1)](
            *args, o, o, *strides, o.stride(0), o.stride(1), 0, *scales, SPLIT=False, **common)
    else:
        part = torch.empty(bsz, hq, num_splits, d, dtype=torch.float32, device=q.device)
        ml = torch.empty(bsz, hq, num_splits, 2, dtype=torch.float32, device=q.device)
        _kvarn_decode_kernel[(bsz * hk, num_splits)](
            *args, part, ml, *strides, part.stride(0), part.stride(1), part.stride(2), *scales, SPLIT=True,
            **common)
        _combine_kernel[(bsz * hk,)](part, ml, sgn, o, num_splits, o.stride(0), o.stride(1), 1.0 / math.sqrt(d),
                                     HK=hk, QPK=qpk, QP=qp, D=d, ROT=rot, IUP=INTERPRET, RF=rf,
                                     SP=_combine_sp(num_splits), num_warps=4)
    if rot:
        return o
    o_model = torch.matmul(o, h32)
    if out is None:
        return o_model.to(out_dtype)
    out.copy_(o_model)
    return out
