"""Kernel tests run on CUDA; on a CPU-only machine they skip, unless TRITON_INTERPRET=1 is set
(then Triton's interpreter runs them on CPU tensors: slow, for development)."""

import os

import pytest
import torch


@pytest.fixture
def dev() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    pytest.skip("needs CUDA (or TRITON_INTERPRET=1 to run the kernels in Triton's CPU interpreter)")
