"""The A/B run: for each arm start (or attach to) a server, measure quality, sweep the load levels
of every workload, stop the server; then compare arms and write one result per workload.

Load levels. Concurrency mode (default): levels 1, 2, 4, ... (``concurrency``); a level replays
``max(min_sessions, sessions_per_slot * c)`` sessions with ``c`` in flight. The sweep of an arm stops
after the first level that is not stable (SLO missed at the SLO percentile, a failed request, or a
preemption) unless ``full_sweep``. Rate mode: levels are Poisson request rates (sessions/s).
Every arm replays identical traffic (the workload is rebuilt from the same seed per level).

While a level runs, ``/metrics`` is polled every ``poll_s``: the level records the preemption
counter's increase (``num_preemptions``), the peak ``vllm:kv_cache_usage_perc`` and the peak number
of waiting requests.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kvarn.bench._http import httpx

from kvarn.bench import metrics as M
from kvarn.bench.client import completion_body, run_closed_loop, run_open_loop, stream_completion
from kvarn.bench.quality import collect_outputs, compare_outputs, quality_prompts
from kvarn.bench.server import (Arm, ArmServer, DEFAULT_SERVER_CMD, capacity_from_metrics, parse_prometheus,
                                served_model)
from kvarn.bench.workloads import TextSource, Workload, build_workload, load_paragraphs, tokenizer_counter

SCHEMA_ID = "kvarn-bench/1"


@dataclass
class BenchConfig:
    model: str
    arms: list[Arm]
    workloads: list[str] = field(default_factory=lambda: ["chat"])
    slo: M.SLO = field(default_factory=M.SLO)
    concurrency: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    request_rates: list[float] = field(default_factory=list)  # non-empty -> rate mode
    sessions_per_slot: int = 2
    min_sessions: int = 4
    num_sessions: int | None = None  # fixed sessions per level (rate mode default: max(min_sessions, 16))
    scale: float = 1.0
    turns: int = 4
    seed: int = 0
    full_sweep: bool = False
    serve_args: list[str] = field(default_factory=list)
    server_cmd: str = DEFAULT_SERVER_CMD
    server_env: dict | None = None
    startup_timeout_s: float = 900.0
    request_timeout_s: float = 600.0
    quality_prompts: int = 8
    quality_prompt_tokens: int = 96
    quality_max_tokens: int = 32
    out_dir: Path = Path("kvarn-bench-out")
    poll_s: float = 0.5
    extra_body: dict | None = None
    progress: bool = True


class _Poller:
    """Polls /metrics while a level runs; keeps the peaks and the preemption counter delta."""

    def __init__(self, base_url: str, period_s: float):
        self.url, self.period = base_url.rstrip("/") + "/metrics", period_s
        self.start: dict[str, float] | None = None
        self.last: dict[str, float] | None = None
        self.peak_kv = 0.0
        self.peak_waiting = 0.0
        self.peak_running = 0.0

    async def _scrape(self, client: httpx.AsyncClient) -> dict[str, float] | None:
        try:
            r = await client.get(self.url)
            return parse_prometheus(r.text) if r.status_code == 200 else None
        except httpx.HTTPError:
            return None

    def _update(self, m: dict[str, float]) -> None:
        self.last = m
        self.peak_kv = max(self.peak_kv, m.get("vllm:kv_cache_usage_perc", 0.0))
        self.peak_waiting = max(self.peak_waiting, m.get("vllm:num_requests_waiting", 0.0))
        self.peak_running = max(self.peak_running, m.get("vllm:num_requests_running", 0.0))

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=5.0) as client:
            self.start = await self._scrape(client)
            while not stop.is_set():
                m = await self._scrape(client)
                if m:
                    self._update(m)
                try:
                    await asyncio.wait_for(stop.wait(), self.period)
                except asyncio.TimeoutError:
                    pass
            m = await self._scrape(client)
            if m:
                self._update(m)

    def summary(self) -> dict:
        if not self.start or not self.last:
            return {"num_preemptions": None, "max_kv_cache_usage_perc": None, "max_num_requests_waiting": None}
        key = "vllm:num_preemptions_total"
        pre = self.last.get(key, 0.0) - self.start.get(key, 0.0) if key in self.last else None
        return {"num_preemptions": int(pre) if pre is not None else None,
                "max_kv_cache_usage_perc": self.peak_kv, "max_num_requests_waiting": int(self.peak_waiting),
                "max_num_requests_running": int(self.peak_running)}


async def _run_level(cfg: BenchConfig, url: str, model: str, wl: Workload, concurrency: int | None,
                     rate: float | None, on_done: Callable | None) -> tuple[list, float, dict]:
    poller, stop = _Poller(url, cfg.poll_s), asyncio.Event()
    ptask = asyncio.create_task(poller.run(stop))
    try:
        if rate is not None:
            res, dur = await run_open_loop(url, model, wl, rate, cfg.seed, cfg.request_timeout_s,
                                           cfg.extra_body, None, on_done)
        else:
            res, dur = await run_closed_loop(url, model, wl, concurrency or 1, cfg.request_timeout_s,
                                             cfg.extra_body, on_done)
    finally:
        stop.set()
        await ptask
    return res, dur, poller.summary()


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="req", disable=not enabled, leave=False, dynamic_ncols=True)


def sweep_workload(cfg: BenchConfig, arm: Arm, url: str, model: str, wl_name: str, text: TextSource,
                   levels: list[dict] | None = None) -> dict:
    """Run every load level of one workload on one arm. Returns {"levels", "stop_reason"}.
    Finished levels are appended to ``levels`` as they finish (kept when Ctrl-C stops the sweep)."""
    levels = [] if levels is None else levels
    rate_mode = bool(cfg.request_rates)
    plan = [(None, r) for r in cfg.request_rates] if rate_mode else [(c, None) for c in cfg.concurrency]
    stop_reason = "max_level"
    for i, (c, r) in enumerate(plan):
        n = max(cfg.min_sessions, cfg.sessions_per_slot * c) if c else max(cfg.min_sessions, 16)
        if wl_name == "burst-decode" and c:
            n = c  # all at once: one wave of c requests
        n = cfg.num_sessions or n
        wl = build_workload(wl_name, text, n, seed=cfg.seed * 1000 + i, scale=cfg.scale, turns=cfg.turns)
        label = f"c={c}" if c else f"rate={r}/s"
        bar = _bar(wl.num_requests, f"{arm.name} {wl.name} {label}", cfg.progress)
        try:
            res, dur, mon = asyncio.run(_run_level(cfg, url, model, wl, c, r, lambda _r: bar.update(1)))
        finally:
            bar.close()
        lv = {"concurrency": c, "request_rate": r, "num_sessions": len(wl.sessions), "num_requests": len(res),
              **M.compute_level_metrics(res, dur, cfg.slo), **mon}
        lv["meets_slo"] = M.meets_slo(lv, cfg.slo)
        lv["stable"] = M.is_stable(lv, cfg.slo)
        levels.append(lv)
        if True:
            print(f"  {arm.name:>18} {wl.name} {label:>10}: {lv['output_throughput']:8.1f} out tok/s, p95 TTFT "
                  f"{lv['p95_ttft_ms']:8.1f} ms, p95 TPOT {lv['p95_tpot_ms']:7.1f} ms, preempt "
                  f"{lv['num_preemptions']}, failed {lv['failed']}" + ("" if lv["stable"] else "  [unstable]"),
                  flush=True)
        if not lv["stable"]:
            stop_reason = ("failed" if lv["failed"] else "preemption" if lv.get("num_preemptions") else "slo")
            if not cfg.full_sweep:
                break
    return {"levels": levels, "stop_reason": stop_reason}


def _arm_record(arm: Arm) -> dict:
    return {"name": arm.name, "kv_cache_dtype": arm.kv_cache_dtype, "block_size": arm.block_size,
            "external": arm.base_url is not None, "status": "pending", "error": "", "startup_s": None,
            "kv_capacity_tokens": None, "side_memory_bytes": None, "server_log": None, "quality": None}


def _summarise(rec: dict, slo: M.SLO) -> None:
    lv = rec.get("levels") or []
    rec["max_stable_concurrency"] = M.max_stable_concurrency(lv, slo)
    stable = [x for x in lv if x.get("stable")]
    rec["throughput_at_slo"] = max((x["output_throughput"] for x in stable), default=0.0)
    rates = [x["request_rate"] for x in stable if x.get("request_rate")]
    rec["max_stable_request_rate"] = max(rates) if rates else None


def device_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cuda": False}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info.update(cuda=True, gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count())
    except Exception:  # noqa: BLE001
        pass
    info["cpu_count"] = os.cpu_count()
    return info


def _run_arm(cfg: BenchConfig, arm: Arm, rec: dict, text: TextSource, prompts: list[str],
             per_wl: dict[str, list[dict]], outputs: dict[str, list[dict]], log: Callable[[str], None]) -> bool:
    """Start (or attach to) one arm's server, collect its quality outputs, sweep every workload, stop
    the server. Fills ``rec``, ``per_wl`` and ``outputs``; returns True when Ctrl-C interrupted it."""
    server = None
    try:
        if arm.base_url:
            url = arm.base_url
            try:
                rec["kv_capacity_tokens"] = capacity_from_metrics(httpx.get(url + "/metrics", timeout=10).text)
            except httpx.HTTPError:
                pass
        else:
            server = ArmServer(arm, cfg.model, cfg.serve_args, cfg.out_dir, cfg.server_cmd, cfg.server_env,
                               cfg.startup_timeout_s)
            log(f"[{arm.name}] starting server on {server.base_url} (log: {server.log_path})")
            ticks = {"next": 15.0}

            def waiting(elapsed: float) -> None:
                if cfg.progress and elapsed >= ticks["next"]:
                    log(f"[{arm.name}] waiting for the server to become healthy ({elapsed:.0f} s)")
                    ticks["next"] += 15.0

            sr = server.start(progress=waiting)
            rec.update(startup_s=sr.startup_s, server_log=sr.log_path, kv_capacity_tokens=sr.kv_capacity_tokens,
                       side_memory_bytes=sr.side_memory_bytes)
            if not sr.ok:
                rec.update(status="failed", error=sr.error)
                log(f"[{arm.name}] FAILED to start: {sr.error}")
                return False
            url = sr.base_url
            log(f"[{arm.name}] healthy after {sr.startup_s:.1f} s; KV capacity {sr.kv_capacity_tokens} tokens")
        model = served_model(url)
        asyncio.run(_warmup(url, model))
        if cfg.quality_prompts:
            outputs[arm.name] = collect_outputs(url, model, prompts, cfg.quality_max_tokens)
        rec["status"] = "running"
        for w in cfg.workloads:
            partial = {"name": arm.name, "levels": [], "stop_reason": "interrupted"}
            per_wl[w].append(partial)
            partial.update(sweep_workload(cfg, arm, url, model, w, text, partial["levels"]))
        rec["status"] = "ok"
    except KeyboardInterrupt:
        rec.update(status="interrupted", error="interrupted by the user (Ctrl-C)")
        log(f"[{arm.name}] interrupted: stopping the server and writing partial results")
        return True
    except Exception as e:  # noqa: BLE001 - a broken arm is a recorded result
        rec.update(status="failed", error=f"{type(e).__name__}: {e}")
        log(f"[{arm.name}] failed: {rec['error']}")
    finally:
        if server is not None:
            server.stop()
    return False


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> list[dict]:
    """Run the whole A/B benchmark. Returns one result dict per workload (partial on Ctrl-C)."""
    from kvarn import __version__
    from kvarn.bench.verdict import decide

    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    text = TextSource(load_paragraphs(), tokenizer_counter(cfg.model))
    prompts = quality_prompts(text, cfg.quality_prompts, cfg.quality_prompt_tokens, cfg.seed)
    per_wl: dict[str, list[dict]] = {w: [] for w in cfg.workloads}
    outputs: dict[str, list[dict]] = {}
    records: list[dict] = []
    interrupted = False
    for arm in cfg.arms:
        records.append(_arm_record(arm))
        interrupted = _run_arm(cfg, arm, records[-1], text, prompts, per_wl, outputs, log)
        if interrupted:
            break
    base = next((r["name"] for r in records if r["kv_cache_dtype"] == "auto"), records[0]["name"])
    results = []
    for w in cfg.workloads:
        done = {r["name"]: {"levels": r["levels"], "stop_reason": r["stop_reason"]} for r in per_wl[w]}
        arms_out = []
        for rec in records:
            r = {**rec, **done.get(rec["name"], {"levels": [], "stop_reason": rec["status"]})}
            if rec["name"] in outputs and base in outputs:
                r["quality"] = compare_outputs(outputs[rec["name"]], outputs[base])
            _summarise(r, cfg.slo)
            arms_out.append(r)
        wl = build_workload(w, text, cfg.min_sessions, seed=cfg.seed, scale=cfg.scale, turns=cfg.turns)
        result = {
            "schema": SCHEMA_ID, "kvarn_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": cfg.model, "mode": "rate" if cfg.request_rates else "concurrency",
            "slo": cfg.slo.as_dict(), "baseline": base, "interrupted": interrupted,
            "workload": {**wl.summary(), "num_sessions": None, "num_requests": None},
            "load_levels": cfg.request_rates or cfg.concurrency, "serve_args": cfg.serve_args,
            "kv_memory_bytes": _kv_budget(cfg.serve_args),
            "device": device_info(),
            "quality_set": {"num_prompts": len(prompts), "prompt_tokens": cfg.quality_prompt_tokens,
                            "max_tokens": cfg.quality_max_tokens},
            "arms": arms_out,
        }
        result["verdict"] = decide(result)
        results.append(result)
    return results


def _kv_budget(serve_args: list[str]) -> int | None:
    """The --kv-cache-memory-bytes value among the serve args, if any."""
    for i, a in enumerate(serve_args[:-1]):
        if a == "--kv-cache-memory-bytes":
            return int(serve_args[i + 1])
    return None


async def _warmup(url: str, model: str) -> None:
    async with httpx.AsyncClient(timeout=600.0) as client:
        r = await stream_completion(client, url, completion_body(model, "Hello, my name is", 4))
        if not r.success:
            raise RuntimeError(f"warm-up request failed: {r.error}")
