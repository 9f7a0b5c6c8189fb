"""Models and text for ``kvarn eval``: load a local HF folder, cut Austen passages into token windows.

Every passage records where it came from (book, first paragraph, paragraphs used, tokens) so a
report says exactly which text produced a number.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

# Books in the order passages are drawn (one passage per book before any book repeats).
BOOK_ORDER = ("Pride & Prejudice", "Emma", "Persuasion", "Mansfield Park", "Sense & Sensibility", "Northanger Abbey")
FIRST_PARAGRAPH = 8  # skip title / chapter front matter
WEIGHTS_NOTE = (
    "The model weights are themselves 4-bit GGUF (dequantized to a dense model); drift is measured against "
    "the same model with an unquantized KV cache."
)


@dataclasses.dataclass
class Passage:
    """A window of ``len(ids)`` tokens of one book. ids: LongTensor [T]."""

    book: str
    first_paragraph: int
    n_paragraphs: int
    ids: torch.Tensor

    def meta(self) -> dict:
        return {"book": self.book, "first_paragraph": self.first_paragraph, "paragraphs": self.n_paragraphs,
                "tokens": int(self.ids.numel())}


def resolve_model(model: str) -> tuple[str, Path]:
    """``default`` / an asset name (``smollm2-135m``, ``qwen2.5-coder-1.5b``) / a folder -> (name, folder)."""
    p = Path(model).expanduser()
    if p.is_dir():
        return p.name, p
    from kvarn import assets

    name = assets.DEFAULT_MODEL if model == "default" else model
    if name not in assets.model_names():
        raise ValueError(f"--model must be default, a folder, or one of {', '.join(assets.model_names())}; got {model!r}")
    return name, Path(assets.default_model_dir(name))


def load_model(folder: Path, dtype: str = "float32"):
    """(model, tokenizer, info) of a Llama/Qwen2-style HF folder, eval mode, on CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {', '.join(dtypes)}, got {dtype!r}")
    cfg = json.loads((Path(folder) / "config.json").read_text())
    if cfg.get("sliding_window") and cfg.get("use_sliding_window", True) and cfg.get("model_type", "").startswith("gemma"):
        raise ValueError(f"{folder}: sliding-window attention layers are not supported by kvarn eval")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtypes[dtype]).eval()
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    info = {
        "folder": str(folder),
        "model_type": c.model_type,
        "layers": c.num_hidden_layers,
        "q_heads": c.num_attention_heads,
        "kv_heads": c.num_key_value_heads,
        "head_dim": head_dim,
        "vocab": c.vocab_size,
        "dtype": dtype,
        "weights_note": WEIGHTS_NOTE,
    }
    return model, tok, info


def encode(tok, text: str, start: bool = True) -> list[int]:
    """Token ids of ``text``; ``start`` adds the special tokens the tokenizer itself puts at a sequence
    start (none for SmolLM2 / Qwen2.5 folders: the text is used as is)."""
    return tok(text, add_special_tokens=start)["input_ids"]


def passages(tok, n: int, tokens: int, books: dict[str, list[str]] | None = None, offset: int = 0) -> list[Passage]:
    """``n`` windows of exactly ``tokens`` tokens (the tokenizer's own sequence-start tokens first, if any).

    Passage i comes from book ``BOOK_ORDER[i % 6]``; repeats of a book start after the previous window.
    ``offset`` shifts the starting paragraph (used to draw prompts disjoint from the perplexity text).
    """
    if books is None:
        from kvarn.assets import austen_books

        books = austen_books()
    order = [b for b in BOOK_ORDER if b in books] or list(books)
    next_para = {b: FIRST_PARAGRAPH + offset for b in order}
    out: list[Passage] = []
    for i in range(n):
        book = order[i % len(order)]
        paras = books[book]
        start = next_para[book]
        ids = encode(tok, "")
        j = start
        while len(ids) < tokens:
            if j >= len(paras):
                raise ValueError(f"{book}: not enough text for a {tokens}-token window from paragraph {start}")
            ids += tok(("\n\n" if j > start else "") + paras[j], add_special_tokens=False)["input_ids"]
            j += 1
        next_para[book] = j
        out.append(Passage(book, start, j - start, torch.tensor(ids[:tokens], dtype=torch.long)))
    return out
