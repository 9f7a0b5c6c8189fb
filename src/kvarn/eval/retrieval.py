"""Long-context retrieval: a pass key buried at varying depths of Austen filler text.

Prompt (token ids, exactly ``context`` tokens)::

    INTRO + filler[:cut] + NEEDLE(key) + filler[cut:] + QUESTION

``cut`` puts the needle at fraction ``depth`` of the filler. The model continues greedily for a few
tokens; the answer is correct when the first number it writes equals the 5-digit key. Accuracy is
reported per depth and per format, with the bf16-cache accuracy as the reference (the weights are
4-bit GGUF, so bf16 itself need not be 100%). The same prompts are used for every format.
"""

from __future__ import annotations

import random
import re
import time
from typing import Callable

import torch

from kvarn.eval.free_run import generate_all
from kvarn.eval.kv_formats import KVFormat

INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. "
         "Find it and memorize it. I will quiz you about it.\n\n")
NEEDLE = "\n\nThe pass key is {key}. Remember it. {key} is the pass key.\n\n"
QUESTION = "\n\nWhat is the pass key? The pass key is"
DEFAULT_DEPTHS = (0.05, 0.25, 0.5, 0.75, 0.95)


def build_prompts(tok, filler_ids: list[list[int]], context: int, depths, trials: int, seed: int = 0):
    """Prompts [context] ids and their metadata (depth, key, filler passage index), depth-major order.

    filler_ids: token lists of filler passages (>= context tokens each); trial t uses passage t % len.
    """
    rng = random.Random(seed)
    prompts, meta = [], []
    intro = tok(INTRO, add_special_tokens=True)["input_ids"]
    question = tok(QUESTION, add_special_tokens=False)["input_ids"]
    for depth in depths:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"depths must be in [0, 1], got {depth}")
        for t in range(trials):
            key = rng.randint(10000, 99999)
            needle = tok(NEEDLE.format(key=key), add_special_tokens=False)["input_ids"]
            n_fill = context - len(intro) - len(needle) - len(question)
            src = filler_ids[t % len(filler_ids)]
            if n_fill <= 0 or len(src) < n_fill:
                raise ValueError(f"context {context} too short or filler too small for the pass-key prompt")
            fill = src[:n_fill]
            cut = int(round(depth * n_fill))
            ids = intro + fill[:cut] + needle + fill[cut:] + question
            prompts.append(torch.tensor(ids, dtype=torch.long))
            meta.append({"depth": depth, "key": key, "filler": t % len(filler_ids), "needle_at": len(intro) + cut})
    return prompts, meta


def parse_answer(text: str) -> int | None:
    m = re.search(r"\d+", text)
    return int(m.group(0)) if m else None


def run_retrieval(
    model,
    tok,
    prompts: list[torch.Tensor],
    meta: list[dict],
    formats: list[KVFormat],
    n_new: int = 8,
    prefill: str = "decode",
    batch: int = 4,
    log: Callable[[str], None] = print,
) -> dict:
    """Accuracy per depth of every format on the same pass-key prompts."""
    depths = sorted({m["depth"] for m in meta})
    result = {"context": int(prompts[0].numel()), "trials_per_depth": len(meta) // len(depths), "depths": depths,
              "prefill": prefill, "formats": {}}
    ref_answers = None
    for fmt in formats:
        t0 = time.time()
        outs = generate_all(model, fmt, prompts, n_new, prefill, batch)
        answers = [parse_answer(tok.decode(o)) for o in outs]
        correct = [a == m["key"] for a, m in zip(answers, meta)]
        per_depth = {}
        for d in depths:
            idx = [i for i, m in enumerate(meta) if m["depth"] == d]
            per_depth[str(d)] = sum(correct[i] for i in idx) / len(idx)
        row = {"bits_per_element": fmt.bits_per_element, "accuracy": sum(correct) / len(correct),
               "per_depth": per_depth, "answers": answers, "seconds": round(time.time() - t0, 1)}
        if fmt.is_exact:
            ref_answers = answers
        elif ref_answers is not None:
            row["same_answer_as_bf16"] = sum(a == r for a, r in zip(answers, ref_answers)) / len(answers)
        result["formats"][fmt.name] = row
        log(f"  {fmt.name:28s} accuracy {row['accuracy']:.2f}  per depth "
            + " ".join(f"{d}:{v:.2f}" for d, v in per_depth.items()) + f"  ({time.time() - t0:.1f} s)")
    return result
