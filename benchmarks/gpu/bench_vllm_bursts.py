"""End-to-end vLLM bursts on a GPU host: KV capacity and burst throughput of one KV dtype (one engine).

    python3 benchmarks/gpu/bench_vllm_bursts.py MODEL_DIR KV_DTYPE [--bursts A,B] [--max-num-seqs 1024]
        [--tp 1] [--json out.json] [--burst NAME=N,PROMPT,OUTPUT ...]

Same method as shared/gpu/kv_burst.py (the script behind shared/baselines.md): dummy weights, bf16,
gpu_memory_utilization 0.90, random prompt ids (seed 0), ``ignore_eos`` with a fixed output length,
all requests submitted at once to ``LLM.generate``, default compilation and CUDA graphs; block size
16 for vLLM's formats, the preset's tile (128) for kvarn. One engine serves every burst of the run.
Bursts (issue #4): A = 768 x (1,024 + 1,024) memory-bound; B = 16 x (2,048 + 512) latency-bound;
C = 256 x (256 + 8,192) long generation; L = 16 x (32,768 + 64) long prompts (chunked prefill: every
prompt's second half is a continuation chunk over 16K cached tokens). ``--burst NAME=N,P,O`` adds or rescales one.
A warm-up of up to 8 requests per burst shape (48 output tokens) runs first, untimed, for every arm.
Prints one ``RESULT {json}`` line per burst and writes all of them to --json.
``--steps`` runs the engine in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and adds per-step
timings to each result; ``--profile NAME@START+COUNT`` also traces decode steps START.. of burst NAME with
torch.profiler and adds GPU kernel time per step by family (``step_profile.py``); ``NAME@pSTART+COUNT``
traces the steps that carry prefill instead.
``--max-model-len N`` fixes max_model_len whatever bursts run (by default it follows them); ``--max-graph-size N``
sets vLLM's CUDA-graph capture limit (default 512, so burst A's 768-request decode steps run eagerly).
"""

import argparse
import json
import os
import random
import time

BURSTS = {"A": (768, 1024, 1024), "B": (16, 2048, 512), "C": (256, 256, 8192), "L": (16, 32768, 64)}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("kv_dtype")
    ap.add_argument("--bursts", default="A,B")
    ap.add_argument("--burst", action="append", default=[], help="NAME=N,PROMPT,OUTPUT")
    ap.add_argument("--max-num-seqs", type=int, default=1024)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--eager", action="store_true")
    ap.add_argument("--max-model-len", type=int, default=None,
                    help="fixed max_model_len (default: the longest selected burst + 16, so it varies with --bursts)")
    ap.add_argument("--max-graph-size", type=int, default=None,
                    help="vLLM's max_cudagraph_capture_size (0.26 default 512: larger decode batches run eagerly)")
    ap.add_argument("--json")
    ap.add_argument("--steps", action="store_true", help="in-process engine; per-step timings in each result")
    ap.add_argument("--profile", help="NAME@START+COUNT: profile decode steps of one burst (NAME@pSTART+COUNT: "
                    "steps carrying prefill; implies --steps)")
    return ap.parse_args(argv)


def parse_profile(spec: str) -> tuple[str, int, int, str]:
    """``A@8+6`` -> ("A", 8, 6, "decode"); ``A@p4+3`` -> ("A", 4, 3, "prefill")."""
    try:
        name, rest = spec.split("@")
        kind = "prefill" if rest.startswith("p") else "decode"
        start, count = (int(x) for x in rest.lstrip("p").split("+"))
    except ValueError:
        raise SystemExit(f"--profile wants NAME@START+COUNT or NAME@pSTART+COUNT, got {spec!r}") from None
    return name, start, count, kind


def main(argv=None):
    a = parse(argv)
    bursts = dict(BURSTS)
    for spec in a.burst:
        name, vals = spec.split("=")
        bursts[name] = tuple(int(x) for x in vals.split(","))
    names = a.bursts.split(",")
    max_len = max(bursts[n][1] + bursts[n][2] for n in names) + 16
    if a.max_model_len is not None:
        if a.max_model_len < max_len:
            raise SystemExit(f"--max-model-len {a.max_model_len} is shorter than the bursts need ({max_len})")
        max_len = a.max_model_len
    prof_name, prof_start, prof_count, prof_kind = None, 0, 0, "decode"
    if a.profile:
        prof_name, prof_start, prof_count, prof_kind = parse_profile(a.profile)
    if a.steps or a.profile:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM, SamplingParams

    kw = {"block_size": 128} if a.kv_dtype.startswith("kvarn_") else {}
    if a.max_graph_size is not None:
        kw["compilation_config"] = {"max_cudagraph_capture_size": a.max_graph_size}
    t0 = time.perf_counter()
    llm = LLM(model=a.model, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16", kv_cache_dtype=a.kv_dtype,
              gpu_memory_utilization=0.90, max_model_len=max_len, max_num_seqs=a.max_num_seqs, seed=0,
              tensor_parallel_size=a.tp, enforce_eager=a.eager, **kw)
    init_s = time.perf_counter() - t0
    cc = llm.llm_engine.vllm_config.cache_config
    capacity = int(cc.num_gpu_blocks) * int(cc.block_size)
    hi = min(100000, llm.llm_engine.model_config.get_vocab_size())  # 100000 for the Qwen3 shapes
    # warm-up on every burst's shapes (JIT compiles, graph replays) so no arm is timed compiling
    warm_rng = random.Random(1)
    for name in names:
        n, ilen, _ = bursts[name]
        warm = [{"prompt_token_ids": [warm_rng.randrange(1000, hi) for _ in range(ilen)]} for _ in range(min(n, 8))]
        llm.generate(warm, SamplingParams(max_tokens=48, ignore_eos=True, detokenize=False), use_tqdm=False)
    rec = None
    if a.steps or a.profile:
        from step_profile import StepRecorder, format_profile
        rec = StepRecorder(llm)
    results = []
    for name in names:
        n, ilen, olen = bursts[name]
        rng = random.Random(0)
        prompts = [{"prompt_token_ids": [rng.randrange(1000, hi) for _ in range(ilen)]} for _ in range(n)]
        sp = SamplingParams(max_tokens=olen, min_tokens=olen, ignore_eos=True, temperature=1.0, detokenize=False)
        if rec:
            rec.begin_burst()
            if name == prof_name:
                rec.profile_window(prof_start, prof_count, prof_kind)
        t1 = time.perf_counter()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        el = time.perf_counter() - t1
        gen = sum(len(o.outputs[0].token_ids) for o in outs)
        res = dict(kv=a.kv_dtype, burst=name, tp=a.tp, max_num_seqs=a.max_num_seqs, init_s=round(init_s, 1),
                   capacity_tokens=capacity, num_gpu_blocks=cc.num_gpu_blocks, block_size=cc.block_size,
                   n=n, ilen=ilen, olen=olen, gen_tokens=gen, elapsed_s=round(el, 2),
                   out_tok_s=round(gen / el, 1), total_tok_s=round((gen + n * ilen) / el, 1))
        if rec:
            res["steps"] = rec.summary()
            if name == prof_name and rec.profile:
                res["profile"], rec.profile = rec.profile, None
                print(format_profile(res["profile"]), flush=True)
        print("RESULT " + json.dumps(res), flush=True)
        results.append(res)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
