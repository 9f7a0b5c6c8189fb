"""``kvarn fidelity``: how close a quantized KV cache stays to the exact one.

synthetic.py (structured K/V/Q generator), capture.py (post-RoPE Q/K/V from a real model via transformers),
metrics.py (NMSE, attention-score cosine, attention-output errors), run.py (methods x sources), cli.py.
"""

from kvarn.fidelity.metrics import METRIC_KEYS, attention_metrics, nmse
from kvarn.fidelity.run import ROW_KEYS, all_methods, run_fidelity
from kvarn.fidelity.synthetic import KVSample, rope, synthetic_kv

__all__ = ["METRIC_KEYS", "ROW_KEYS", "KVSample", "attention_metrics", "nmse", "all_methods", "run_fidelity",
           "rope", "synthetic_kv"]
