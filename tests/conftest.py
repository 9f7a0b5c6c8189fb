"""Shared fixtures."""

import pytest


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: small tensors run ~3x faster than with 2 threads on a shared CPU."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
