"""A deterministic streaming OpenAI-completions server on 127.0.0.1 with known token timings.

It stands in for ``vllm serve`` in tests: the same flags (unknown ones are ignored), the same
capacity log line, /health, /v1/models, /metrics (Prometheus text with vLLM's metric names) and
streaming /v1/completions with usage and logprobs.

Timing of one request (all sleeps are exact targets; the OS adds ~1 ms of jitter):
    wait for KV admission (see below), then TTFT = ttft_ms, then one chunk per token every itl_ms.
    A request may override them with body fields ``fake_ttft_ms`` / ``fake_itl_ms`` or with the same
    words in its prompt (``fake_ttft_ms=120 fake_itl_ms=15``), so one workload can mix timings.
Tokens: output token i is text " w{i}" (id 1000+i), logprob -0.5; with ``--diverge-at K`` a non-bf16
KV dtype emits id 5000+i from position K on and logprob -0.6 everywhere (so the quality code sees a
known first divergence and a known mean logprob difference of -0.1).
KV memory: capacity tokens = ``--capacity-tokens`` x (1 for auto/bf16, 2 for fp8, 4 for kvarn_*). A
request holds prompt_words + max_tokens tokens while it runs; one that does not fit waits
(counted in vllm:num_requests_waiting) and adds one to vllm:num_preemptions_total.
``--fail-dtype X`` makes startup with ``--kv-cache-dtype X`` exit 1 after printing an OOM message.
``--itl-factor-quant F`` multiplies itl_ms for quantized dtypes (compute cost of dequantization).

Run: python tests/fake_openai_server.py --port 8123 [--kv-cache-dtype kvarn_k4v2_g128] ...
In-process: ``srv, url = start_in_thread(FakeConfig(...))`` then ``srv.shutdown()``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class FakeConfig:
    model: str = "fake-model"
    kv_cache_dtype: str = "auto"
    ttft_ms: float = 20.0
    itl_ms: float = 5.0
    capacity_tokens: int = 100_000
    diverge_at: int = -1
    itl_factor_quant: float = 1.0

    @property
    def quantized(self) -> bool:
        return self.kv_cache_dtype not in ("auto", "bfloat16", "float16", "bf16")

    @property
    def capacity(self) -> int:
        mult = 4 if self.kv_cache_dtype.startswith("kvarn_") else 2 if self.kv_cache_dtype.startswith("fp8") else 1
        return self.capacity_tokens * mult


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 drops bursts of connections


class FakeState:
    def __init__(self, cfg: FakeConfig):
        self.cfg = cfg
        self.cond = threading.Condition()
        self.used = 0
        self.running = 0
        self.waiting = 0
        self.preemptions = 0
        self.requests = 0

    def admit(self, need: int) -> None:
        with self.cond:
            need = min(need, self.cfg.capacity)
            if self.used + need > self.cfg.capacity:
                self.preemptions += 1
                self.waiting += 1
                while self.used + need > self.cfg.capacity:
                    self.cond.wait()
                self.waiting -= 1
            self.used += need
            self.running += 1
            self.requests += 1

    def release(self, need: int) -> None:
        with self.cond:
            self.used -= min(need, self.cfg.capacity)
            self.running -= 1
            self.cond.notify_all()

    def prometheus(self) -> str:
        with self.cond:
            m = self.cfg.model
            return (
                f'vllm:num_requests_running{{model_name="{m}"}} {self.running}\n'
                f'vllm:num_requests_waiting{{model_name="{m}"}} {self.waiting}\n'
                f'vllm:kv_cache_usage_perc{{model_name="{m}"}} {self.used / self.cfg.capacity}\n'
                f'vllm:num_preemptions_total{{model_name="{m}"}} {float(self.preemptions)}\n'
                f'vllm:request_success_total{{model_name="{m}",finished_reason="length"}} {float(self.requests)}\n'
            )


def make_handler(state: FakeState):
    cfg = state.cfg

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *a):  # quiet
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            if self.path == "/health":
                self._send(200, b"")
            elif self.path == "/v1/models":
                self._send(200, json.dumps({"object": "list", "data": [{"id": cfg.model, "object": "model"}]}).encode())
            elif self.path == "/metrics":
                self._send(200, state.prometheus().encode(), "text/plain; version=0.0.4")
            else:
                self._send(404, b'{"error": "not found"}')

        def do_POST(self):  # noqa: N802
            if self.path != "/v1/completions":
                self._send(404, b'{"error": "not found"}')
                return
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if body.get("model") != cfg.model:
                self._send(404, json.dumps({"error": f"model {body.get('model')!r} not served"}).encode())
                return
            prompt = body.get("prompt", "")
            n_prompt = len(prompt.split()) if isinstance(prompt, str) else len(prompt)
            n_out = int(body.get("max_tokens", 16))
            words = dict(w.split("=", 1) for w in str(prompt).split() if w.startswith("fake_") and "=" in w)
            ttft = float(body.get("fake_ttft_ms", words.get("fake_ttft_ms", cfg.ttft_ms))) / 1000.0
            itl = float(body.get("fake_itl_ms", words.get("fake_itl_ms", cfg.itl_ms))) / 1000.0
            if cfg.quantized:
                itl *= cfg.itl_factor_quant
            want_lp = body.get("logprobs") is not None
            need = n_prompt + n_out
            state.admit(need)
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                t0 = time.perf_counter()
                for i in range(n_out):
                    target = t0 + ttft + i * itl
                    delay = target - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    diverged = cfg.quantized and 0 <= cfg.diverge_at <= i
                    tid = (5000 if diverged else 1000) + i
                    choice = {"index": 0, "text": f" w{i}", "finish_reason": "length" if i == n_out - 1 else None}
                    if want_lp:
                        lp = -0.6 if cfg.quantized and cfg.diverge_at >= 0 else -0.5
                        choice["logprobs"] = {"tokens": [f"token_id:{tid}"], "token_logprobs": [lp],
                                              "top_logprobs": None, "text_offset": [0]}
                    self.wfile.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
                    self.wfile.flush()
                usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
                self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                state.release(need)

    return Handler


def start_in_thread(cfg: FakeConfig, port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Serve in a daemon thread; returns (server, base_url). Stop with ``server.shutdown()``."""
    srv = _Server(("127.0.0.1", port), make_handler(FakeState(cfg)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fake-model")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--kv-cache-dtype", default="auto")
    p.add_argument("--ttft-ms", type=float, default=20.0)
    p.add_argument("--itl-ms", type=float, default=5.0)
    p.add_argument("--capacity-tokens", type=int, default=100_000)
    p.add_argument("--diverge-at", type=int, default=-1)
    p.add_argument("--itl-factor-quant", type=float, default=1.0)
    p.add_argument("--fail-dtype", default="")
    p.add_argument("--startup-delay", type=float, default=0.2)
    args, _unknown = p.parse_known_args(argv)
    cfg = FakeConfig(model=args.served_model_name or args.model, kv_cache_dtype=args.kv_cache_dtype,
                     ttft_ms=args.ttft_ms, itl_ms=args.itl_ms, capacity_tokens=args.capacity_tokens,
                     diverge_at=args.diverge_at, itl_factor_quant=args.itl_factor_quant)
    print(f"INFO fake server starting with kv_cache_dtype={cfg.kv_cache_dtype} "
          f"KVARN_SINK={os.environ.get('KVARN_SINK', '')}", flush=True)
    time.sleep(args.startup_delay)
    if args.fail_dtype and args.fail_dtype == args.kv_cache_dtype:
        print("ERROR torch.OutOfMemoryError: CUDA out of memory (fake)", file=sys.stderr, flush=True)
        return 1
    if cfg.kv_cache_dtype.startswith("kvarn_"):
        print("WARNING kvarn: fp16 sink/tail pool 8 slots = 1.0 MiB (pool_bytes=1048576), not included", flush=True)
    print(f"INFO [kv_cache_utils.py:2328] CPU KV cache size: {cfg.capacity:,} tokens, "
          f"Maximum concurrency for 4,096 tokens per request: {cfg.capacity / 4096:.2f}x", flush=True)
    srv = _Server((args.host, args.port), make_handler(FakeState(cfg)))
    print(f"INFO Uvicorn running on http://{args.host}:{args.port}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
