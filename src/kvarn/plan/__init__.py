"""``kvarn plan``: a calculator that predicts, before any benchmark, whether a vLLM deployment is
KV-memory-bound and what each KV-cache format (bf16, fp8, vLLM int4, TurboQuant, kvarn) buys or costs.

Modules: gpus (GPU table), model (HF config -> shape), formats (bytes per token, kernel attributes),
memory (KV capacity incl. the kvarn fp16 pool), roofline (decode step / prefill times), workloads
(length distributions), predict (per-format throughput/latency/cost), advisor (flowchart branch and
recommendation), report (text/JSON), calibrate (error against a kvarn bench result), cli.
"""

from kvarn.plan.advisor import make_plan
from kvarn.plan.formats import get_format
from kvarn.plan.gpus import get_gpu
from kvarn.plan.model import load_model
from kvarn.plan.workloads import build_workload

__all__ = ["make_plan", "get_format", "get_gpu", "load_model", "build_workload"]
