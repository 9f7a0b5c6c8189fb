"""kvarn as a vLLM plugin (entry point ``vllm.general_plugins: kvarn = kvarn.vllm_plugin:register``).

``register()`` runs in every vLLM process (front end, engine core, workers). It is idempotent and
applies the small set of patches in :mod:`kvarn.vllm_plugin.patches` so that the single flag
``--kv-cache-dtype kvarn_k4v2_g128`` selects the kvarn attention backend with its smaller pages.
Importing this package does not import vLLM; ``register`` does.
"""

from __future__ import annotations

_REGISTERED = False


def register() -> None:
    """Install kvarn into the running vLLM (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from kvarn.vllm_plugin import patches

    patches.apply_all()
    _REGISTERED = True
