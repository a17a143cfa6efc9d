"""Atomic directory output: write into a temp dir beside the target, then rename.

Every stage that writes a directory (prepare, checkpoint, export, recommend) uses this, so an
interrupted or failed run never leaves a half-written output behind.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from unirec_dist.errors import UnirecError


def check_output_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """Fail fast (before any work) when `out` exists and `overwrite` is not set."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UnirecError(f"output {out} already exists; pass --overwrite to replace it")
    return out


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temp dir; on success it replaces `out`, on error it is removed.

    The temp dir lives in `out`'s parent so the final step is a same-filesystem rename.
    """
    out = check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, out)


def publish_dir(tmp: Path, out: Path) -> None:
    """Move a completed `tmp` dir to `out`, replacing an existing `out` last."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
