"""The `unirec` command: parses arguments and calls library functions, nothing else.

Each subcommand lives in `unirec_dist/commands/<name>.py` with `register(subparsers)`, which adds
its parser and sets `func` (a callable taking the parsed args and returning an exit code).
Command modules import only argparse at module level, so `unirec --help` stays fast.

A `UnirecError` (a user mistake) is printed as one line, `error: ...`, with exit code 2; so is an
operating-system failure of the machine's making (read-only file system, disk full, no
permission: `error: PATH: REASON`). SIGTERM/SIGINT end a command within seconds (utils/signals.py).
"""
from __future__ import annotations

import argparse
import errno
import importlib
import sys

from unirec_dist import __version__
from unirec_dist.errors import OutputExistsError, UnirecError

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


# OSErrors that are the machine's state, not a bug of ours: reported as one line
_OS_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EFBIG}


def os_error_line(e: OSError) -> str | None:
    """`PATH: REASON` for an operating-system failure of the machine's making, else None.

    Outputs written through utils/atomic.py already fail as one UnirecError naming the output;
    this catches the rest (a library writing on its own, e.g. training logs)."""
    from unirec_dist.utils.atomic import os_reason

    if e.errno not in _OS_ERRNOS:
        return None
    path = e.filename if e.filename is not None else "the command's output"
    return f"{path}: {os_reason(e)}"


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
    if argv is None:   # a real command line (tests call main(argv) in-process)
        from unirec_dist.utils import signals

        signals.install()
    from unirec_dist.utils.logging import setup_cli_logging

    setup_cli_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except OutputExistsError as e:
        print(f"error: {e}; pass --overwrite to replace it", file=sys.stderr)
        return 2
    except UnirecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        line = os_error_line(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
