"""The ``kvarn`` command. Each tool registers its own subcommand via ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys

# module path -> each exposes register(subparsers) that adds its subcommand with set_defaults(func=...)
SUBCOMMAND_MODULES = (
    "kvarn.bench.cli",
    "kvarn.fidelity.cli",
    "kvarn.eval.cli",
    "kvarn.plan.cli",
    "kvarn.assets_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvarn", description="Low-bit KV-cache quantization for vLLM: benchmark, evaluate, plan."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in SUBCOMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def _version() -> str:
    from kvarn import __version__

    return f"kvarn {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
