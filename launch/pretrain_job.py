"""The driver a submitted Ray job runs: `python -m launch.pretrain_job --config ... [--workers N]`.

Takes exactly the arguments of `unirec pretrain`, joins the cluster it runs on (the job
supervisor's RAY_ADDRESS, else address="auto"; never a new embedded cluster) and calls the
library. A user mistake exits 2 with one `error: ...` line in the job's logs, like the CLI.

It first checks that the job's Python has the stack: a head started outside the project's
environment would otherwise end the job in an import traceback from deep inside a worker.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# what a pretraining job imports, lowest layer first
STACK = ("numpy", "yaml", "pyarrow", "torch", "fbgemm_gpu", "torchrec", "lightning", "ray.train")


def missing_stack() -> list[str]:
    """The modules of STACK this Python cannot import, with the reason when it is not absence."""
    missing = []
    for name in STACK:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            missing.append(e.name or name)
        except Exception as e:   # noqa: BLE001 - installed but broken (e.g. a CUDA build on CPU)
            missing.append(f"{name} ({' '.join(str(e).split())[:120]})")
    return list(dict.fromkeys(missing))


def check_stack() -> str | None:
    """One line saying what is missing and where the stack belongs, or None when all is there."""
    missing = missing_stack()
    if not missing:
        return None
    return (f"this job's Python ({sys.executable}) lacks {', '.join(missing)}: install the unirec stack "
            f"on every node of the cluster (make install; see cluster/README.md) and start Ray from that "
            f"environment")


def build_parser() -> argparse.ArgumentParser:
    from unirec_dist.commands import pretrain

    parser = argparse.ArgumentParser(prog="python -m launch.pretrain_job")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command")
    pretrain.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    problem = check_stack()
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in argv or "--verbose" in argv
    argv = [a for a in argv if a not in ("-v", "--verbose")]
    args = build_parser().parse_args(["pretrain", *argv])
    args.verbose = verbose
    if args.address is None:
        # Inside a Ray job the supervisor sets RAY_ADDRESS to the cluster's GCS; "auto" would
        # pick whichever cluster this machine started last, which on a shared host can be
        # someone else's.
        args.address = os.environ.get("RAY_ADDRESS") or "auto"
    from unirec_dist.utils.logging import setup_cli_logging

    setup_cli_logging(verbose)
    from unirec_dist.errors import UnirecError

    try:
        return int(args.func(args) or 0)
    except UnirecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
