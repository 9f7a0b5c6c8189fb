"""Async streaming OpenAI-completions client (httpx) with the timing rules of ``vllm bench serve``.

For every request (``POST {base_url}/v1/completions``, ``stream=true``, usage included):

* ``ttft``    = time of the first chunk carrying choices - send time            (seconds)
* ``itl``     = gaps between consecutive choice chunks (one entry per chunk after the first)
* ``latency`` = time of the last choice chunk - send time (E2EL)
* ``output_tokens`` = ``usage.completion_tokens`` (fallback: number of choice chunks)
* ``prompt_len``    = ``usage.prompt_tokens``

Sessions (see :mod:`kvarn.bench.workloads`) run their turns in order; each turn's prompt is the
session prefix + history (earlier prompts and the model's replies) + the new user text.
Load generation: ``run_closed_loop`` keeps ``concurrency`` sessions in flight; ``run_open_loop``
starts sessions at Poisson arrival times of rate ``request_rate`` (sessions/s).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Callable

from kvarn.bench._http import httpx

from kvarn.bench.workloads import Session, Workload


@dataclass
class RequestResult:
    """One request's outcome; times in seconds (as vLLM's RequestFuncOutput)."""

    success: bool = False
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0
    start_time: float = 0.0
    generated_text: str = ""
    error: str = ""
    tokens: list[str] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    session_id: str = ""
    turn: int = 0


def completion_body(model: str, prompt: str, max_tokens: int, ignore_eos: bool = False,
                    logprobs: int | None = None, extra: dict | None = None) -> dict:
    """The JSON body of a streaming greedy completion request."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": ignore_eos,
    }
    if ignore_eos:
        body["min_tokens"] = max_tokens
    if logprobs is not None:
        body["logprobs"] = logprobs
        body["return_tokens_as_token_ids"] = True
    if extra:
        body.update(extra)
    return body


async def stream_completion(client: httpx.AsyncClient, base_url: str, body: dict,
                            clock: Callable[[], float] = time.perf_counter) -> RequestResult:
    """Send one streaming request and time it. Never raises for HTTP/stream errors: success=False."""
    out = RequestResult()
    st = clock()
    out.start_time = st
    recent = st
    first = True
    chunks = 0
    try:
        async with client.stream("POST", base_url.rstrip("/") + "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                out.error = f"HTTP {resp.status_code}: {text[:300]}"
                return out
            async for line in resp.aiter_lines():
                line = line.strip()
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    continue
                data = json.loads(payload)
                if data.get("error"):
                    out.error = str(data["error"])[:300]
                    return out
                choices = data.get("choices")
                if choices:
                    ts = clock()
                    if first:
                        out.ttft = ts - st
                        first = False
                    else:
                        out.itl.append(ts - recent)
                    recent = ts
                    chunks += 1
                    ch = choices[0]
                    out.generated_text += ch.get("text") or ""
                    lp = ch.get("logprobs") or {}
                    out.tokens.extend(lp.get("tokens") or [])
                    out.logprobs.extend(float(x) if x is not None else 0.0 for x in (lp.get("token_logprobs") or []))
                usage = data.get("usage")
                if usage:
                    out.output_tokens = int(usage.get("completion_tokens") or 0)
                    out.prompt_len = int(usage.get("prompt_tokens") or 0)
        if first:
            out.error = "no tokens received"
            return out
        out.output_tokens = out.output_tokens or chunks
        out.latency = recent - st
        out.success = True
    except (httpx.HTTPError, json.JSONDecodeError, OSError) as e:
        out.error = f"{type(e).__name__}: {e}"[:300]
    return out


async def run_session(client: httpx.AsyncClient, base_url: str, model: str, session: Session,
                      extra: dict | None = None, logprobs: int | None = None) -> list[RequestResult]:
    """Run a session's turns in order, growing the history with the model's replies."""
    history = session.prefix
    results = []
    for k, turn in enumerate(session.turns):
        prompt = history + turn.user_text
        body = completion_body(model, prompt, turn.max_tokens, turn.ignore_eos, logprobs, extra)
        r = await stream_completion(client, base_url, body)
        r.session_id, r.turn = session.session_id, k
        results.append(r)
        if not r.success:
            break  # a failed turn ends its session (its history is broken)
        history = prompt + r.generated_text
    return results


def _client(concurrency: int, timeout_s: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=30.0), limits=limits)


async def run_closed_loop(base_url: str, model: str, workload: Workload, concurrency: int,
                          timeout_s: float = 600.0, extra: dict | None = None,
                          on_done: Callable[[RequestResult], None] | None = None) -> tuple[list[RequestResult], float]:
    """Keep ``concurrency`` sessions in flight until all ran. Returns (results, duration_s)."""
    queue: asyncio.Queue[Session] = asyncio.Queue()
    for s in workload.sessions:
        queue.put_nowait(s)
    results: list[RequestResult] = []

    async with _client(concurrency, timeout_s) as client:
        async def worker() -> None:
            while True:
                try:
                    s = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                for r in await run_session(client, base_url, model, s, extra):
                    results.append(r)
                    if on_done:
                        on_done(r)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
        return results, time.perf_counter() - t0


async def run_open_loop(base_url: str, model: str, workload: Workload, request_rate: float, seed: int = 0,
                        timeout_s: float = 600.0, extra: dict | None = None, max_concurrency: int | None = None,
                        on_done: Callable[[RequestResult], None] | None = None) -> tuple[list[RequestResult], float]:
    """Start sessions at Poisson arrivals (exponential gaps, mean 1/request_rate s)."""
    if request_rate <= 0:
        raise ValueError(f"request_rate must be > 0, got {request_rate}")
    rng = random.Random(seed)
    results: list[RequestResult] = []
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    n = len(workload.sessions)

    async with _client(max_concurrency or n, timeout_s) as client:
        async def one(s: Session) -> None:
            if sem:
                async with sem:
                    rs = await run_session(client, base_url, model, s, extra)
            else:
                rs = await run_session(client, base_url, model, s, extra)
            for r in rs:
                results.append(r)
                if on_done:
                    on_done(r)

        t0 = time.perf_counter()
        tasks = []
        for i, s in enumerate(workload.sessions):
            tasks.append(asyncio.create_task(one(s)))
            if i + 1 < n:
                await asyncio.sleep(rng.expovariate(request_rate))
        await asyncio.gather(*tasks)
        return results, time.perf_counter() - t0
