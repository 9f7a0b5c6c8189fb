"""Model shape from a Hugging Face ``config.json``: parameter count, weight bytes, KV geometry.

Parameter count of a dense decoder (Llama/Qwen/Mistral family), per layer::

    attn = h*(Hq*D) + 2*h*(Hk*D) + (Hq*D)*h        (q, k, v, o projections; biases ignored)
    mlp  = 3*h*I                                   (gate, up, down)
    norm = 2*h (+ 2*D for Qwen3's q/k norms)
    total = L*(attn + mlp + norm) + V*h*(1 if tied else 2) + h

Mixture-of-experts configs (``num_experts``/``num_local_experts``/``n_routed_experts``) replace the MLP by
E experts of ``moe_intermediate_size`` (+ a router and optional shared expert); ``params_active`` counts
the top-k experts only (what a token's forward pass multiplies).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "half": 2, "float": 4}


@dataclass(frozen=True)
class ModelShape:
    name: str
    num_layers: int
    hidden: int
    intermediate: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab: int
    tie_embeddings: bool
    weight_bytes_per_param: float = 2.0
    num_experts: int = 0
    experts_per_tok: int = 0
    moe_intermediate: int = 0
    shared_expert_intermediate: int = 0
    qk_norm: bool = False
    sliding_window: int | None = None

    # ---- parameter counts ---------------------------------------------------------------
    @property
    def attn_params_per_layer(self) -> int:
        h, q, kv = self.hidden, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return h * q + 2 * h * kv + q * h

    @property
    def mlp_params_per_layer(self) -> int:
        if self.num_experts:
            experts = self.num_experts * 3 * self.hidden * self.moe_intermediate
            return experts + self.hidden * self.num_experts + 3 * self.hidden * self.shared_expert_intermediate
        return 3 * self.hidden * self.intermediate

    @property
    def mlp_active_params_per_layer(self) -> int:
        if self.num_experts:
            return (self.experts_per_tok * 3 * self.hidden * self.moe_intermediate
                    + self.hidden * self.num_experts + 3 * self.hidden * self.shared_expert_intermediate)
        return self.mlp_params_per_layer

    @property
    def norm_params_per_layer(self) -> int:
        return 2 * self.hidden + (2 * self.head_dim if self.qk_norm else 0)

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def lm_head_params(self) -> int:
        return self.vocab * self.hidden  # the same tensor as the embedding when tied

    @property
    def params_total(self) -> int:
        per = self.attn_params_per_layer + self.mlp_params_per_layer + self.norm_params_per_layer
        return self.num_layers * per + self.embed_params * (1 if self.tie_embeddings else 2) + self.hidden

    @property
    def params_active(self) -> int:
        """Parameters one token's forward multiplies (no embedding lookup; the lm_head counts)."""
        per = self.attn_params_per_layer + self.mlp_active_params_per_layer + self.norm_params_per_layer
        return self.num_layers * per + self.lm_head_params

    @property
    def weight_bytes(self) -> float:
        return self.params_total * self.weight_bytes_per_param

    @property
    def mlp_width(self) -> int:
        """Width of the widest MLP activation per token (dense I, or top-k * moe I + shared)."""
        if self.num_experts:
            return self.experts_per_tok * self.moe_intermediate + self.shared_expert_intermediate
        return self.intermediate

    def weight_bytes_read_per_step(self, batch: int) -> float:
        """Weight bytes a decode step of ``batch`` tokens streams from HBM (no input-embedding table;
        for MoE only the experts some token in the batch routes to, assuming uniform routing)."""
        dense = self.num_layers * (self.attn_params_per_layer + self.norm_params_per_layer) + self.lm_head_params
        if self.num_experts:
            e, k = self.num_experts, self.experts_per_tok
            touched = e * (1.0 - (1.0 - k / e) ** max(batch, 1))
            per_exp = 3 * self.hidden * self.moe_intermediate
            shared = 3 * self.hidden * self.shared_expert_intermediate
            mlp = self.num_layers * (touched * per_exp + self.hidden * e + shared)
        else:
            mlp = self.num_layers * self.mlp_params_per_layer
        return (dense + mlp) * self.weight_bytes_per_param

    def kv_heads_per_gpu(self, tp: int) -> int:
        """KV heads one GPU stores under tensor parallelism (replicated when tp > num_kv_heads)."""
        return max(1, self.num_kv_heads // tp)

    @property
    def q_heads_per_kv(self) -> int:
        """Query heads per KV head (the GQA ratio; the same on every tensor-parallel rank)."""
        return self.num_heads // max(self.num_kv_heads, 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(params_total=self.params_total, params_active=self.params_active, weight_bytes=self.weight_bytes,
                 q_heads_per_kv=self.q_heads_per_kv)
        return d


def _first(cfg: dict, *keys, default=None):
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def shape_from_config(cfg: dict, name: str = "model") -> ModelShape:
    """Build a :class:`ModelShape` from a parsed HF config dict (``text_config`` is honoured)."""
    if "text_config" in cfg and isinstance(cfg["text_config"], dict):
        outer_tie = cfg.get("tie_word_embeddings")
        cfg = {**cfg["text_config"], **({"tie_word_embeddings": outer_tie} if outer_tie is not None else {})}
    try:
        layers = int(_first(cfg, "num_hidden_layers", "n_layer", "num_layers"))
        hidden = int(_first(cfg, "hidden_size", "n_embd", "d_model"))
        heads = int(_first(cfg, "num_attention_heads", "n_head"))
    except TypeError as e:
        raise ValueError(f"{name}: config lacks num_hidden_layers/hidden_size/num_attention_heads") from e
    kv_heads = int(_first(cfg, "num_key_value_heads", "num_kv_heads", default=heads))
    head_dim = int(_first(cfg, "head_dim", default=hidden // heads))
    experts = int(_first(cfg, "num_experts", "num_local_experts", "n_routed_experts", default=0) or 0)
    dtype = str(_first(cfg, "torch_dtype", "dtype", default="bfloat16")).replace("torch.", "")
    bpp = float(DTYPE_BYTES.get(dtype, 2))
    q = cfg.get("quantization_config") or {}
    if q.get("bits") in (4, 8) and q.get("quant_method") in ("awq", "gptq", "compressed-tensors", "gptq_marlin"):
        bpp = q["bits"] / 8 + 2 * 2 / int(q.get("group_size", 128) or 128)  # codes + fp16 scale/zero per group
    elif str(q.get("quant_method", "")).startswith("fp8"):
        bpp = 1.0
    sw = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
    return ModelShape(
        name=name,
        num_layers=layers,
        hidden=hidden,
        intermediate=int(_first(cfg, "intermediate_size", "ffn_dim", default=4 * hidden)),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab=int(_first(cfg, "vocab_size", default=32000)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        weight_bytes_per_param=bpp,
        num_experts=experts,
        experts_per_tok=int(_first(cfg, "num_experts_per_tok", "moe_top_k", default=0) or 0) if experts else 0,
        moe_intermediate=int(_first(cfg, "moe_intermediate_size", default=0) or 0) if experts else 0,
        shared_expert_intermediate=int(_first(cfg, "shared_expert_intermediate_size", default=0) or 0),
        qk_norm=str(cfg.get("model_type", "")).startswith("qwen3"),
        sliding_window=int(sw) if sw else None,
    )


def builtin_model_names() -> list[str]:
    root = resources.files("kvarn") / "data" / "models"
    try:
        return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())
    except (FileNotFoundError, NotADirectoryError):
        return []


def load_model(spec: str) -> ModelShape:
    """Load a shape from a folder holding config.json, a config.json path, or a built-in name
    (``qwen3-8b``; a hub id such as ``Qwen/Qwen3-8B`` maps to its last component, lower-cased)."""
    p = Path(spec).expanduser()
    if p.is_dir():
        p = p / "config.json"
    if p.is_file():
        return shape_from_config(json.loads(p.read_text()), name=p.parent.name or p.stem)
    key = spec.strip().split("/")[-1].lower()
    root = resources.files("kvarn") / "data" / "models" / key / "config.json"
    if root.is_file():
        return shape_from_config(json.loads(root.read_text()), name=key)
    raise ValueError(
        f"model {spec!r}: no config.json there and no built-in shape of that name; "
        f"built-in: {', '.join(builtin_model_names()) or '(none)'}; or pass a folder / config.json path"
    )
