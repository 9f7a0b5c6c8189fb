"""``kvarn eval``: output-quality drift of every KV-cache format on real models (CPU reference + vLLM).

Modules:
    kv_formats       one interface over bf16, every kvarn preset x numerics, fp8 / int4 / KIVI-2
    cache_attention  transformers attention reading K/V as the quantized cache returns them
    pseudo_decode    teacher-forced drift: perplexity, KL, top-1 agreement by position bucket
    free_run         greedy generations: exact match and first divergence
    retrieval        passkey retrieval at varying depths
    vllm_run         the free-running and retrieval checks through real vLLM with the kvarn plugin
    report           tables (markdown/text) and the JSON summary
    cli              ``kvarn eval``
"""

from kvarn.eval.kv_formats import KVFormat, format_names, make_format, resolve_names

__all__ = ["KVFormat", "format_names", "make_format", "resolve_names"]
