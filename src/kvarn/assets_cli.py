"""``kvarn model``: fetch and locate the offline real models (and the Austen text) kvarn uses.

    kvarn model fetch [NAME]     build the cached HF folder of NAME (default smollm2-135m); prints its path
    kvarn model fetch --text     also fetch/cache the Jane Austen paragraphs
    kvarn model path NAME        print the cached folder of NAME (exit 1 if it is not built yet)
    kvarn model list             list the known models and whether each is cached
"""

from __future__ import annotations

import argparse
import sys

from kvarn import assets


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("model", help="fetch/locate the offline real models and text kvarn uses",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="model_command", metavar="ACTION")
    f = sub.add_parser("fetch", help="download and convert a model (cached)")
    f.add_argument("name", nargs="?", default=assets.DEFAULT_MODEL, help=f"one of: {', '.join(assets.MODELS)}")
    f.add_argument("--text", action="store_true", help="also fetch the Austen text (Debian r-cran-janeaustenr)")
    f.set_defaults(func=_fetch)
    q = sub.add_parser("path", help="print the cached folder of a model")
    q.add_argument("name", help=f"one of: {', '.join(assets.MODELS)}")
    q.set_defaults(func=_path)
    ls = sub.add_parser("list", help="list the known models")
    ls.set_defaults(func=_list)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _fetch(args: argparse.Namespace) -> int:
    try:
        path = assets.default_model_dir(args.name)
        if args.text:
            n = len(assets.austen_paragraphs())
            print(f"austen: {n} paragraphs in {assets.cache_root() / 'text' / 'austen.json'}", file=sys.stderr)
    except (ValueError, RuntimeError) as e:
        print(f"kvarn model fetch: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _path(args: argparse.Namespace) -> int:
    try:
        path = assets.model_dir_if_present(args.name)
    except ValueError as e:
        print(f"kvarn model path: {e}", file=sys.stderr)
        return 1
    if path is None:
        print(f"kvarn model path: {args.name} is not cached yet; run `kvarn model fetch {args.name}`",
              file=sys.stderr)
        return 1
    print(path)
    return 0


def _list(args: argparse.Namespace) -> int:
    for name, spec in assets.MODELS.items():
        path = assets.model_dir_if_present(name)
        print(f"{name:20s} {'cached ' if path else 'missing'}  {spec.description}")
    return 0
