"""A dummy-weight model folder with a real tokenizer, for GPU benchmarks of a model *shape*.

``vllm serve DIR --load-format dummy`` needs only ``config.json``; to serve text prompts through
the OpenAI API it also needs a tokenizer. This copies a shape's ``config.json`` (e.g.
``shared/models/qwen3-8b``), takes the tokenizer of a small local model (default: the bundled
SmolLM2-135M-Instruct), and sets ``vocab_size`` and the bos/eos/pad ids to that tokenizer's, so every
sampled id decodes. The embedding and LM head shrink with the vocabulary (Qwen3: 151,936 -> 49,152
rows); attention, MLP and the KV cache -- what a KV-format benchmark measures -- keep the shape.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "chat_template.jinja", "tokenizer.model")


def make_dummy_model(shape: Path, out: Path, tokenizer_dir: Path | None = None) -> Path:
    """Write ``out`` = shape config + tokenizer files; returns ``out``."""
    shape, out = Path(shape), Path(out)
    cfg_path = shape / "config.json" if shape.is_dir() else shape
    if not cfg_path.is_file():
        raise ValueError(f"no config.json at {shape}")
    if tokenizer_dir is None:
        from kvarn.assets import default_model_dir  # type: ignore

        tokenizer_dir = default_model_dir()
    tokenizer_dir = Path(tokenizer_dir)
    if not (tokenizer_dir / "tokenizer.json").is_file() and not (tokenizer_dir / "tokenizer.model").is_file():
        raise ValueError(f"no tokenizer files in {tokenizer_dir}")
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, out / name)
            copied.append(name)
    tok_cfg = json.loads((tokenizer_dir / "config.json").read_text()) if (tokenizer_dir / "config.json").is_file() else {}
    vocab = _vocab_size(tokenizer_dir) or tok_cfg.get("vocab_size")
    if not vocab:
        raise ValueError(f"cannot tell the vocabulary size of the tokenizer in {tokenizer_dir}")
    cfg = json.loads(cfg_path.read_text())
    cfg["vocab_size"] = int(vocab)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key in tok_cfg:
            cfg[key] = tok_cfg[key]
    cfg["kvarn_dummy"] = {"shape": str(cfg_path), "tokenizer": str(tokenizer_dir)}
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return out


def _vocab_size(tokenizer_dir: Path) -> int | None:
    """Size of tokenizer.json's vocabulary including added tokens (max id + 1)."""
    p = tokenizer_dir / "tokenizer.json"
    if not p.is_file():
        return None
    tj = json.loads(p.read_text())
    ids = list((tj.get("model") or {}).get("vocab", {}).values()) if isinstance((tj.get("model") or {}).get("vocab"), dict) else []
    ids += [t["id"] for t in tj.get("added_tokens") or []]
    return max(ids) + 1 if ids else None
