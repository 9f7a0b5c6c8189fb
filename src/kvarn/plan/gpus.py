"""A small built-in table of GPUs: memory, HBM bandwidth, dense bf16 FLOP/s, link bandwidth, price.

``memory_bytes`` is what the CUDA driver reports as total device memory (``torch.cuda.mem_get_info()[1]``,
which vLLM multiplies by ``gpu_memory_utilization``), not the marketing number. The H200 value was read
on the project's H200 (150,109,880,320 B = 139.80 GiB; nvidia-smi shows 143,771 MiB). The others are the
usual driver totals (the nvidia-smi MiB figure less the ~0.5 GiB the driver keeps), good to about 1%.

Bandwidth and FLOP/s are vendor peak numbers (dense bf16, no sparsity). The roofline applies its own
efficiency factors (:mod:`kvarn.plan.roofline`). ``link_gbs`` is the per-direction GPU-to-GPU bandwidth
that tensor-parallel all-reduces see (NVLink for SXM parts, PCIe otherwise). ``price_per_hour`` is a
rough on-demand cloud price in USD per GPU-hour, only a default for ``--gpu-price``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

GiB = 1024**3


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int
    hbm_tbs: float  # peak memory bandwidth, TB/s (1e12 B/s)
    bf16_tflops: float  # dense bf16 tensor-core peak, TFLOP/s
    link_gbs: float  # per-direction GPU-GPU bandwidth for all-reduce, GB/s
    price_per_hour: float  # USD per GPU-hour (default for --gpu-price)
    sms: int = 132  # streaming multiprocessors (decode-attention occupancy)
    note: str = ""

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GiB

    @property
    def bw_bytes_s(self) -> float:
        return self.hbm_tbs * 1e12

    @property
    def flops(self) -> float:
        return self.bf16_tflops * 1e12

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["memory_gib"] = round(self.memory_gib, 2)
        return d


GPUS: dict[str, GPU] = {
    "h100": GPU("h100", int(79.11 * GiB), 3.35, 989.0, 450.0, 2.5, 132, "H100 SXM 80 GB"),
    "h200": GPU("h200", 150_109_880_320, 4.8, 989.0, 450.0, 3.5, 132, "H200 SXM 141 GB (memory measured)"),
    "a100-40": GPU("a100-40", int(39.39 * GiB), 1.555, 312.0, 300.0, 1.3, 108, "A100 SXM 40 GB"),
    "a100-80": GPU("a100-80", int(79.15 * GiB), 2.039, 312.0, 300.0, 1.8, 108, "A100 SXM 80 GB"),
    "l40s": GPU("l40s", int(44.39 * GiB), 0.864, 362.0, 32.0, 1.0, 142, "L40S 48 GB, PCIe"),
    "rtx4090": GPU("rtx4090", int(23.99 * GiB), 1.008, 165.0, 32.0, 0.4, 128, "RTX 4090 24 GB, PCIe"),
    "rtx5090": GPU("rtx5090", int(31.36 * GiB), 1.792, 209.5, 64.0, 0.7, 170, "RTX 5090 32 GB, PCIe 5"),
    "b200": GPU("b200", int(178.35 * GiB), 8.0, 2250.0, 900.0, 6.0, 148, "B200 180 GB"),
}
ALIASES = {"a100": "a100-80", "4090": "rtx4090", "5090": "rtx5090", "h100-sxm": "h100", "h200-sxm": "h200"}


def gpu_names() -> list[str]:
    return list(GPUS)


def get_gpu(
    name: str,
    memory_gib: float | None = None,
    hbm_tbs: float | None = None,
    bf16_tflops: float | None = None,
    link_gbs: float | None = None,
    price_per_hour: float | None = None,
) -> GPU:
    """Look up ``name`` (case-insensitive) and apply any explicit overrides.

    ``name="custom"`` builds a GPU from the explicit numbers alone (memory, bandwidth and FLOP/s are
    then required). Raises ValueError listing the valid names.
    """
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key == "custom":
        missing = [n for n, v in (("--gpu-mem-gib", memory_gib), ("--gpu-bw-tbs", hbm_tbs),
                                  ("--gpu-tflops", bf16_tflops)) if v is None]
        if missing:
            raise ValueError(f"--gpu custom needs {', '.join(missing)}")
        base = GPU("custom", int(memory_gib * GiB), hbm_tbs, bf16_tflops, link_gbs or 32.0,
                   price_per_hour if price_per_hour is not None else 1.0, 132, "explicit numbers")
        return base
    if key not in GPUS:
        raise ValueError(f"unknown GPU {name!r}; valid: {', '.join(gpu_names())}, custom")
    g = GPUS[key]
    repl = {}
    if memory_gib is not None:
        repl["memory_bytes"] = int(memory_gib * GiB)
    if hbm_tbs is not None:
        repl["hbm_tbs"] = hbm_tbs
    if bf16_tflops is not None:
        repl["bf16_tflops"] = bf16_tflops
    if link_gbs is not None:
        repl["link_gbs"] = link_gbs
    if price_per_hour is not None:
        repl["price_per_hour"] = price_per_hour
    return dataclasses.replace(g, **repl) if repl else g


def vllm_batch_defaults(gpu: GPU, mode: str = "serve") -> tuple[int, int]:
    """vLLM's default (max_num_batched_tokens, max_num_seqs) on this GPU (vllm/engine/arg_utils.py).

    mode "serve" = ``vllm serve`` (OPENAI_API_SERVER), "offline" = the ``LLM`` class.
    """
    if mode not in ("serve", "offline"):
        raise ValueError(f"mode must be 'serve' or 'offline', got {mode!r}")
    if gpu.memory_bytes >= 160 * GiB:
        return 16384, 1024
    if gpu.memory_bytes >= 70 * GiB and not gpu.name.startswith("a100"):
        return (8192 if mode == "serve" else 16384), 1024
    return (2048 if mode == "serve" else 8192), 256
