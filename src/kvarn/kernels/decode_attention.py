"""Fused paged decode attention over a kvarn cache (packed tiles + fp16 pool rows): the launcher.

q [B, Hq, D] is rotated (q H, times scale * log2 e) inside the Triton program (decode_kernel.py,
head_dim <= 128; here for 256), which walks each request's tiles, reading records (dequantized in registers, never
materialized) and fp16 pool rows (sink, tail, unflushed blocks), with an fp32 online softmax and
GQA (all query heads of a KV head in one program). Split-K (flash-decoding) is chosen from static
shapes when B*Hk programs would leave SMs idle: each split writes its unnormalized accumulator,
max and sum, and _combine_kernel merges them (log-sum-exp). The output is un-rotated (o_rot H)
and stored in q's dtype (or into ``out``) by the last kernel: one launch per call without split-K,
two with it. The Gluon path (decode_gluon.py, the default where it applies on a GPU) is one launch either way: its last
program per (request, KV head) merges the splits (decode_gluon_merge.py). Launch shapes (split-K factor, warps):
decode_policy.py. All launches are CUDA-graph safe (no host sync, shapes only; the Gluon merge's arrival counters
are a zeroed buffer per device that every launch leaves zero).
"""

from __future__ import annotations

import math

import torch
import triton

from kvarn.config import TOKENS_PER_PROGRAM_CHOICES, KvarnConfig
from kvarn.kernels._common import (ACT_DTYPES, DECODE_AHEAD, DECODE_ASM, DECODE_GLUON, DECODE_POOL_BN,
                                   DECODE_PREFETCH, DECODE_ROTF, DECODE_SWAP, DECODE_TRIM, INTERPRET,
                                   LOG2E, check, check_cache, hadamard, hadamard_factor_signs, hadamard_signs,
                                   layout_constexprs, num_sms, prefetch_lanes)
from kvarn.kernels.decode_gluon import gluon_applies, gluon_record_partials
from kvarn.kernels.decode_gluon_pool import _rotate_q_kernel
from kvarn.kernels.decode_kernel import _combine_kernel, _kvarn_decode_kernel
from kvarn.kernels.decode_policy import (DECODE_REGS, choose_decode_swap, choose_decode_warps,  # noqa: F401
                                         choose_num_splits, choose_pool_splits, decode_launch_shape,
                                         splits_for_two_warps)


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
# Fused path with the in-kernel q rotation: the last Gluon program of each (request, KV head) merges the partials
# itself (decode_gluon_merge; arrival counters), so a call is one launch; False: the split-K combine launch after it.
# H200, CUDA-graph us per layer call, combine launch -> merge, two runs each (results/h200-merge-2026-12-01t, call 2):
# 32 x 8,192 99.0 / 99.5 -> 97.5 / 97.6, 128 x 8,192 334.6 / 334.1 -> 329.9 / 330.5, 256 x 8,192 667.0 / 673.4 ->
# 662.8 / 665.7, 768 x 1,152 432.4 / 432.1 -> 424.5 / 426.8, 8 x 32,768 103.6 / 103.7 -> 100.0 / 99.9.
GLUON_MERGE = True
_COUNTERS: dict = {}
_RETIRED: list = []  # counters replaced by larger ones: kept alive, a captured CUDA graph may still use them


def reserve_arrival_counters(device: torch.device, n: int = 65536) -> torch.Tensor:
    """Zeroed int32 arrival counters (>= n, at least 65,536) of the merging Gluon launch on ``device``, allocated now
    (call it eagerly, before any CUDA-graph capture: a capture only records the zeroing, so an eager launch before
    the graph's first replay would read uninitialized counters). Every launch leaves them zero. The vLLM backend
    reserves them when it starts (B*Hk up to max(max_num_batched_tokens, max_num_seqs) * KV heads)."""
    cuda = device.type == "cuda"
    key = (device.type, device.index if device.index is not None else torch.cuda.current_device() if cuda else 0)
    buf = _COUNTERS.get(key)
    if buf is None or buf.numel() < n:
        if cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"kvarn: the Gluon decode merge needs {n} zeroed arrival counters on {device} but "
                               "they were not reserved before this CUDA-graph capture; call "
                               "kvarn.kernels.decode_attention.reserve_arrival_counters(device, n) eagerly first")
        if buf is not None:
            _RETIRED.append(buf)
        buf = torch.zeros(max(n, 65536), dtype=torch.int32, device=device)
        _COUNTERS[key] = buf
    return buf


def _combine(part: torch.Tensor, ml: torch.Tensor, sgn: torch.Tensor, o: torch.Tensor, splits: int, hk: int,
             qpk: int, qp: int, rot: bool, rf: bool) -> None:
    """The split-K combine launch: the ``splits`` partials of part [B, Hq, splits, D] / ml -> o (rotated back when
    ``rot``); every partial in one load while splits <= COMBINE_ONE_LOAD_MAX (SP = next_pow2), else one per step."""
    d = part.shape[3]
    _combine_kernel[(part.shape[0] * hk,)](
        part, ml, sgn, o, splits, o.stride(0), o.stride(1), 1.0 / math.sqrt(d), HK=hk, QPK=qpk, QP=qp, D=d, ROT=rot,
        IUP=INTERPRET, RF=rf, SP=triton.next_power_of_2(splits) if splits <= COMBINE_ONE_LOAD_MAX else 0, num_warps=4)


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
    last program of each (request, KV head) merges them (one launch; GLUON_MERGE off: the split-K combine launch;
    GLUON_POOL_FUSED / GLUON_QROT off: the earlier forms). The Gluon path has its own split rule
    (decode_policy.decode_launch_shape, gluon=True). pool_splits None =
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
    use_gluon = (DECODE_GLUON if gluon is None else gluon) and gluon_applies(cfg, qpk, tpr, all_pool, q.device)
    num_splits, num_warps = decode_launch_shape(groups, hk, max_blocks, num_sms(q.device), num_splits, num_warps,
                                                all_pool, tpr, gluon=use_gluon)
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
    if use_gluon:
        # record splits into partial slots 0..S-1 and the pool tiles (and the token sink's row) into S..S+P-1, merged
        # into o. Default: one Gluon launch for both (pool programs after the record splits), each program rotating
        # q itself, its last program per (request, KV head) merging (GLUON_MERGE off: the split-K combine launch);
        # or q rotated by its own launch first (GLUON_QROT off); or the Triton kernel's pool pass before the Gluon
        # record pass (GLUON_POOL_FUSED off); both with the combine launch
        ps = choose_pool_splits(bsz, hk, num_sms(q.device)) if pool_splits is None else pool_splits
        part = torch.empty(bsz, hq, num_splits + ps, d, dtype=torch.float32, device=q.device)
        ml = torch.empty(bsz, hq, num_splits + ps, 2, dtype=torch.float32, device=q.device)
        if GLUON_POOL_FUSED and GLUON_QROT:
            gluon_record_partials(q_in, kv_cache, block_to_slot, block_table, seq_lens, part, ml, num_splits,
                                  cfg.token_sink, pool_k, pool_v, ps, pool_scale, GLUON_POOL_BN, q_mult,
                                  out=o if GLUON_MERGE else None,
                                  counters=reserve_arrival_counters(q.device, bsz * hk) if GLUON_MERGE else None)
            if GLUON_MERGE:
                return o
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
        _combine(part, ml, sgn, o, num_splits + ps, hk, qpk, qp, rot, rf)
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
        _combine(part, ml, sgn, o, num_splits, hk, qpk, qp, rot, rf)
    if rot:
        return o
    o_model = torch.matmul(o, h32)
    if out is None:
        return o_model.to(out_dtype)
    out.copy_(o_model)
    return out
