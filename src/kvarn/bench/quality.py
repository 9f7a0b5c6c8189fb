"""Quality drift: greedy outputs of a fixed prompt set, compared with the baseline (bf16) arm.

Every arm answers the same ``num_prompts`` prompts (real text, seeded) with temperature 0,
``max_tokens`` tokens (ignore_eos, so lengths match) and ``logprobs=1`` with token ids.
Against the baseline outputs b and an arm's outputs a (token-id sequences):

* exact_match_rate       = #{prompts with a == b} / num_prompts
* first divergence d     = first position where a and b differ (= length when equal);
  ``mean_first_divergence`` averages d, ``min_first_divergence`` is the worst prompt
* token_agreement        = mean over prompts of d / len(b) (the agreeing greedy prefix fraction)
* mean_logprob_diff      = mean over positions < d of (logprob_a - logprob_b) of the chosen token
  (same token on both sides, so this is the drift of the model's confidence; negative = less sure);
  ``mean_abs_logprob_diff`` is the mean of |.|. None when the server returned no logprobs (then
  sequences are compared character by character).
"""

from __future__ import annotations

import asyncio
import random

from kvarn.bench._http import httpx

from kvarn.bench.client import RequestResult, completion_body, stream_completion
from kvarn.bench.workloads import TextSource


def quality_prompts(text: TextSource, num_prompts: int = 8, prompt_tokens: int = 96, seed: int = 1234) -> list[str]:
    rng = random.Random(f"quality:{seed}")
    return [text.take(rng, prompt_tokens) for _ in range(num_prompts)]


async def _collect(base_url: str, model: str, prompts: list[str], max_tokens: int) -> list[RequestResult]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=30.0)) as client:
        sem = asyncio.Semaphore(4)

        async def one(p: str) -> RequestResult:
            async with sem:
                body = completion_body(model, p, max_tokens, ignore_eos=True, logprobs=1)
                return await stream_completion(client, base_url, body)

        return list(await asyncio.gather(*(one(p) for p in prompts)))


def collect_outputs(base_url: str, model: str, prompts: list[str], max_tokens: int) -> list[dict]:
    """Greedy outputs per prompt: {"tokens": [...], "logprobs": [...], "text": str, "error": str}."""
    res = asyncio.run(_collect(base_url, model, prompts, max_tokens))
    return [{"tokens": r.tokens or list(r.generated_text), "logprobs": r.logprobs if r.tokens else [],
             "text": r.generated_text, "error": r.error if not r.success else ""} for r in res]


def first_divergence(a: list, b: list) -> int:
    """First index where the sequences differ (the shorter length when one is a prefix of the other)."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def compare_outputs(arm: list[dict], base: list[dict]) -> dict:
    """Drift statistics of ``arm`` against ``base`` (same prompts, same order); see module docstring."""
    if len(arm) != len(base):
        raise ValueError(f"quality sets differ in size: {len(arm)} vs {len(base)}")
    pairs = [(a, b) for a, b in zip(arm, base) if not a["error"] and not b["error"]]
    if not pairs:
        return {"num_prompts": len(base), "compared": 0, "exact_match_rate": None, "mean_first_divergence": None,
                "min_first_divergence": None, "token_agreement": None, "mean_logprob_diff": None,
                "mean_abs_logprob_diff": None}
    exact, divs, agree, diffs = 0, [], [], []
    for a, b in pairs:
        d = first_divergence(a["tokens"], b["tokens"])
        exact += int(a["tokens"] == b["tokens"])
        divs.append(d)
        agree.append(d / len(b["tokens"]) if b["tokens"] else 1.0)
        if a["logprobs"] and b["logprobs"]:
            diffs.extend(a["logprobs"][i] - b["logprobs"][i] for i in range(min(d, len(a["logprobs"]), len(b["logprobs"]))))
    return {
        "num_prompts": len(base),
        "compared": len(pairs),
        "exact_match_rate": exact / len(pairs),
        "mean_first_divergence": sum(divs) / len(divs),
        "min_first_divergence": min(divs),
        "token_agreement": sum(agree) / len(agree),
        "mean_logprob_diff": sum(diffs) / len(diffs) if diffs else None,
        "mean_abs_logprob_diff": sum(abs(x) for x in diffs) / len(diffs) if diffs else None,
    }
