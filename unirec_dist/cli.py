"""The `unirec` command: parses arguments and calls library functions, nothing else.

Each subcommand lives in `unirec_dist/commands/<name>.py` with `register(subparsers)`, which adds
its parser and sets `func` (a callable taking the parsed args and returning an exit code).
Command modules import only argparse at module level, so `unirec --help` stays fast.

A `UnirecError` (a user mistake) is printed as one line, `error: ...`, with exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from unirec_dist import __version__
from unirec_dist.errors import UnirecError

# Order here is the order in `unirec --help`.
COMMANDS = [
    "demo",
    "data",
    "prepare",
    "train", "finetune",
    "pretrain",
    "evaluate", "recommend", "report",
    "export", "serve", "explain",
    "submit", "jobs",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unirec", description="Unified distributed pretraining for recommendation.")
    parser.add_argument("--version", action="version", version=f"unirec_dist {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"unirec_dist.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from unirec_dist.utils.logging import setup_cli_logging

    setup_cli_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except UnirecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
