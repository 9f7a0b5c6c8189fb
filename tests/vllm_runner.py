"""Run one vLLM (CPU) engine in a subprocess for the end-to-end tests.

    python tests/vllm_runner.py '<json>' | @spec.json
JSON: {"model": path, "kv_cache_dtype": "auto"|"kvarn_...", "engine": {extra LLM kwargs},
       "prompts": [[token ids]] | ["text"], "max_tokens": int | [int per prompt], "ignore_eos": bool,
       "waves": int (repeat the prompt set this many times, sequentially), "pool_stats": bool,
       "count_preemptions": bool (vLLM's vllm:num_preemptions counter; set engine disable_log_stats False)}
Prints ``RESULT {"tokens": [[...], ...], "pool": {...} | null}`` as its last line; vLLM's own log
(including the "KV cache size" line and the kvarn line) goes to the same output.
"""

import json
import os
import sys

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # collective_rpc(worker_pool_stats)


def main(spec: dict) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    engine = dict(
        model=spec["model"],
        kv_cache_dtype=spec.get("kv_cache_dtype", "auto"),
        enforce_eager=True,
        dtype=spec.get("dtype", "bfloat16"),
        seed=0,
        max_model_len=spec.get("max_model_len", 2048),
    )
    engine.update(spec.get("engine", {}))
    llm = LLM(**engine)
    prompts = [TokensPrompt(prompt_token_ids=p) if isinstance(p, list) else p for p in spec["prompts"]]
    mt = spec.get("max_tokens", 8)
    sp = [SamplingParams(max_tokens=m, temperature=0, ignore_eos=spec.get("ignore_eos", True))
          for m in (mt if isinstance(mt, list) else [mt] * len(prompts))]
    tokens = []
    for _ in range(spec.get("waves", 1)):
        if spec.get("sequential"):
            outs = [llm.generate([p], [q], use_tqdm=False)[0] for p, q in zip(prompts, sp)]
        else:
            outs = llm.generate(prompts, sp, use_tqdm=False)
        tokens.extend(list(o.outputs[0].token_ids) for o in outs)
    pools = None
    if spec.get("pool_stats"):
        from kvarn.vllm_plugin.pool import worker_pool_stats

        pools = llm.collective_rpc(worker_pool_stats)  # one entry per worker (TP rank)
    pool = pools[0] if pools else None
    preemptions = None
    if spec.get("count_preemptions"):  # needs engine {"disable_log_stats": False}
        preemptions = int(sum(getattr(m, "value", 0) for m in llm.get_metrics() if m.name == "vllm:num_preemptions"))
    print("RESULT " + json.dumps({"tokens": tokens, "pool": pool, "pools": pools, "preemptions": preemptions}),
          flush=True)


if __name__ == "__main__":
    arg = sys.argv[1]
    main(json.loads(open(arg[1:]).read() if arg.startswith("@") else arg))
