"""Workloads the planner reasons about: request length distributions plus concurrency or arrival rate.

The names match ``kvarn bench`` (chat, long-context-agent, rag, burst-decode, file:PATH), but the lengths
here are production-scale (a GPU deployment), not the bench's CPU-sized defaults:

====================  ============================  ===========================  ==============================
preset                prompt tokens                 output tokens                traffic
====================  ============================  ===========================  ==============================
chat                  log-uniform 200..2,000        log-uniform 100..600         128 concurrent users
long-context-agent    uniform 8K..32K (85% of it    uniform 200..800             32 concurrent sessions
                      a prefix-cache hit)
rag                   uniform 2K..6K                uniform 100..400             64 concurrent users
burst-decode          uniform 128..256              8,192 fixed (ignore_eos)     256 requests, all at t = 0
long-prompt           uniform 16K..32K (no prefix   uniform 32..128              16 concurrent users
                      hits: chunked prefill)
burst:N:P:O           P fixed                       O fixed                      N requests, all at t = 0
file:PATH             JSONL, one request per line                                all at once unless --concurrency
                      ("prompt_tokens"/"prompt_len", "output_tokens"/"output_len";
                      a bench file's "prompt" text (~4 chars/token) and "max_tokens" also work)
====================  ============================  ===========================  ==============================

Each preset draws ``SAMPLES`` requests from a fixed-seed RNG, so a plan is reproducible.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

PRESET_NAMES = ("chat", "long-context-agent", "rag", "burst-decode", "long-prompt")
SAMPLES = 512


@dataclass
class Workload:
    """``requests``: (prompt_tokens, output_tokens) pairs. ``burst``: all requests arrive at t = 0
    (a closed batch of len(requests)); otherwise ``concurrency`` users loop (closed loop) or requests
    arrive at ``request_rate`` per second (open loop)."""

    name: str
    requests: list[tuple[int, int]]
    concurrency: int | None = None
    request_rate: float | None = None
    burst: bool = False
    prefix_hit_frac: float = 0.0  # share of prompt tokens served from the prefix cache (no prefill compute)
    description: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.requests:
            raise ValueError(f"workload {self.name}: no requests")
        if any(p < 0 or o < 1 for p, o in self.requests):
            raise ValueError(f"workload {self.name}: need prompt_tokens >= 0 and output_tokens >= 1")

    @property
    def num_requests(self) -> int:
        return len(self.requests)

    @property
    def mean_prompt(self) -> float:
        return sum(p for p, _ in self.requests) / self.num_requests

    @property
    def mean_output(self) -> float:
        return sum(o for _, o in self.requests) / self.num_requests

    @property
    def mean_final_context(self) -> float:
        """Mean prompt + output: the KV a request holds when it finishes."""
        return self.mean_prompt + self.mean_output

    @property
    def mean_decode_context(self) -> float:
        """Mean context a decode step attends over, weighted by output tokens: P + (O + 1) / 2."""
        tot = sum(o for _, o in self.requests)
        return sum(o * (p + (o + 1) / 2) for p, o in self.requests) / tot

    def percentile_context(self, q: float) -> int:
        ctx = sorted(p + o for p, o in self.requests)
        return ctx[min(len(ctx) - 1, max(0, math.ceil(q * len(ctx)) - 1))]

    @property
    def target_concurrency(self) -> int:
        """Sequences that want to be resident at once (burst: all of them)."""
        if self.concurrency:
            return int(self.concurrency)
        return self.num_requests if self.burst else 1

    def summary(self) -> dict:
        return {
            "name": self.name, "description": self.description, "num_requests": self.num_requests,
            "burst": self.burst, "concurrency": self.concurrency, "request_rate": self.request_rate,
            "mean_prompt_tokens": round(self.mean_prompt, 1), "mean_output_tokens": round(self.mean_output, 1),
            "p95_context_tokens": self.percentile_context(0.95), "max_context_tokens": self.percentile_context(1.0),
            "prefix_hit_frac": self.prefix_hit_frac,
        }


def _loguniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def build_workload(spec: str, concurrency: int | None = None, request_rate: float | None = None) -> Workload:
    """Build a workload from a preset name, ``burst:N:P:O`` or ``file:PATH``; overrides apply last.
    Raises ValueError listing the valid names."""
    rng = random.Random(f"kvarn-plan:{spec}")
    if spec.startswith("file:"):
        w = load_jsonl(Path(spec[5:]))
    elif spec.startswith("burst:"):
        try:
            n, p, o = (int(x) for x in spec[6:].split(":"))
        except ValueError as e:
            raise ValueError(f"burst spec must be burst:N:PROMPT:OUTPUT, got {spec!r}") from e
        w = Workload(spec, [(p, o)] * n, burst=True, description=f"{n} requests of {p} + {o} tokens, all at once")
    elif spec == "chat":
        reqs = [(_loguniform(rng, 200, 2000), _loguniform(rng, 100, 600)) for _ in range(SAMPLES)]
        w = Workload(spec, reqs, concurrency=128, description="chat: ~0.2-2K prompts, ~100-600 output, 128 users")
    elif spec == "long-context-agent":
        reqs = [(rng.randint(8192, 32768), rng.randint(200, 800)) for _ in range(SAMPLES)]
        w = Workload(spec, reqs, concurrency=32, prefix_hit_frac=0.85,
                     description="agent sessions: 8-32K context (85% prefix-cached), 200-800 output, 32 sessions")
    elif spec == "rag":
        reqs = [(rng.randint(2048, 6144), rng.randint(100, 400)) for _ in range(SAMPLES)]
        w = Workload(spec, reqs, concurrency=64, description="RAG: 2-6K prompts, 100-400 output, 64 users")
    elif spec == "burst-decode":
        reqs = [(rng.randint(128, 256), 8192) for _ in range(256)]
        w = Workload(spec, reqs, burst=True,
                     description="burst: 256 requests, ~128-256 prompt, 8,192 output (ignore_eos), all at once")
    elif spec == "long-prompt":
        reqs = [(rng.randint(16384, 32768), rng.randint(32, 128)) for _ in range(SAMPLES)]
        w = Workload(spec, reqs, concurrency=16,
                     description="long prompts: 16-32K-token documents, 32-128 output, 16 users")
    else:
        raise ValueError(f"unknown workload {spec!r}; valid: {', '.join(PRESET_NAMES)}, burst:N:P:O, file:PATH")
    if concurrency is not None:
        if concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {concurrency}")
        w.concurrency, w.burst = concurrency, False
    if request_rate is not None:
        if request_rate <= 0:
            raise ValueError(f"--request-rate must be > 0, got {request_rate}")
        w.request_rate, w.burst = request_rate, False
    return w


def _tokens(obj: dict, keys: tuple[str, ...], text_key: str | None) -> int | None:
    for k in keys:
        if obj.get(k) is not None:
            return int(obj[k])
    if text_key and isinstance(obj.get(text_key), str):
        return max(1, round(len(obj[text_key]) / 4))
    return None


def load_jsonl(path: Path) -> Workload:
    """Read one request per line: prompt_tokens|prompt_len (or "prompt" text), output_tokens|output_len
    (or "max_tokens"). A file is a burst (all requests at once) unless --concurrency/--request-rate is given."""
    if not path.is_file():
        raise ValueError(f"workload file not found: {path}")
    reqs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON: {e}") from e
        p = _tokens(obj, ("prompt_tokens", "prompt_len", "input_len"), "prompt")
        o = _tokens(obj, ("output_tokens", "output_len", "max_tokens"), None)
        if p is None or o is None:
            raise ValueError(f"{path}:{n}: need prompt_tokens (or prompt_len) and output_tokens (or output_len)")
        reqs.append((p, o))
    if not reqs:
        raise ValueError(f"workload file {path} holds no requests")
    return Workload(f"file:{path.name}", reqs, burst=True, description=f"{len(reqs)} requests from {path}")
