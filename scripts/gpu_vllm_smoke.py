"""vLLM + kvarn on a GPU host: capacity line, generation, a small burst (one KV dtype per process).

    python3 scripts/gpu_vllm_smoke.py MODEL_DIR KV_DTYPE [NUM_PROMPTS PROMPT_LEN OUTPUT_LEN] [--eager]
Dummy weights, token-id prompts (no tokenizer). Prints one ``RESULT {json}`` line; exits 1 unless every request
got its OUTPUT_LEN tokens and the engine reported a KV capacity (blocks x block size).
"""

import json
import os
import sys
import time

if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    model, dtype = args[0], args[1]
    n, plen, olen = (int(x) for x in (args[2:5] if len(args) >= 5 else (64, 256, 256)))
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    t0 = time.time()
    llm = LLM(model=model, load_format="dummy", skip_tokenizer_init=True, kv_cache_dtype=dtype,
              max_model_len=4096, max_num_seqs=256, seed=0,
              gpu_memory_utilization=float(os.environ.get("SMOKE_MEM_UTIL", "0.9")),  # 0.3 on a CPU host
              enforce_eager="--eager" in sys.argv)
    start_s = time.time() - t0
    prompts = [TokensPrompt(prompt_token_ids=[(i * 131 + j * 7) % 30000 + 10 for j in range(plen)]) for i in range(n)]
    sp = SamplingParams(max_tokens=olen, temperature=0, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True), use_tqdm=False)
    t1 = time.time()
    outs = llm.generate(prompts, sp, use_tqdm=False)
    dt = time.time() - t1
    toks = [list(o.outputs[0].token_ids) for o in outs]
    full = all(len(t) == olen for t in toks)
    cc = llm.llm_engine.vllm_config.cache_config
    capacity = int(cc.num_gpu_blocks or 0) * int(cc.block_size)
    print("RESULT " + json.dumps({
        "kv_cache_dtype": dtype, "engine_start_s": round(start_s, 1), "requests": n, "prompt_len": plen,
        "output_len": olen, "seconds": round(dt, 2), "output_tok_s": round(n * olen / dt, 1),
        "first_tokens": toks[0][:16], "all_same_len": full,
        "capacity_tokens": capacity, "block_size": cc.block_size, "cuda_graphs": "--eager" not in sys.argv,
    }), flush=True)
    if not (full and capacity > 0):
        sys.exit(1)
