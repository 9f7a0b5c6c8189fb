"""kvarn: variance-normalized low-bit KV-cache quantization for vLLM.

Layers (imports point one way only):
  kvarn.config, kvarn.reference  -- pure PyTorch: the method as an executable spec and CPU path
  kvarn.kernels                  -- Triton kernels (GPU), checked against the reference
  kvarn.vllm_plugin              -- the vLLM attention backend, plugin registration, version shims
  kvarn.fidelity / bench / plan / eval, kvarn.cli -- tools on top
"""

from kvarn.config import DEFAULT_PRESET, KvarnConfig, NUMERICS, PRESETS

__version__ = "0.1.0"
__all__ = ["KvarnConfig", "PRESETS", "NUMERICS", "DEFAULT_PRESET", "__version__"]
