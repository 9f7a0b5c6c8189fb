"""``kvarn bench``: replay the same traffic against bf16 and quantized KV caches in vLLM, measure
throughput, latency, capacity and quality drift, and give a verdict (ship / don't ship / caveat).

Modules: workloads (traffic presets), client (streaming OpenAI client), metrics (vLLM-named
metrics, SLO), server (arms and `vllm serve` processes), quality (greedy drift), sweep (the run),
verdict, report_md / report_html (outputs), importer (`vllm bench serve` JSON), schema, cli.
"""

from kvarn.bench.metrics import SLO, compute_level_metrics
from kvarn.bench.server import Arm, parse_arms
from kvarn.bench.sweep import BenchConfig, run_bench

__all__ = ["SLO", "Arm", "BenchConfig", "compute_level_metrics", "parse_arms", "run_bench"]
