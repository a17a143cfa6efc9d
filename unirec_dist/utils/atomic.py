"""Atomic directory output: write into a temp dir beside the target, then rename.

Every stage that writes a directory (prepare, checkpoint, export, recommend) uses this, so an
interrupted or failed run never leaves a half-written output behind.

A temp dir holds a marker file (`MARKER`: the owner's host, pid and process start time) for as
long as it is being written. A `kill -9` leaves the temp dir behind; the next `atomic_dir` into
the same parent removes the ones whose marker names a process of this host that is gone. A
folder without our marker is never touched, whatever its name.

An operating-system error while writing (read-only mount, full disk, permission) becomes one
`OutputError` line naming the output and the reason; the temp dir is removed.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from unirec_dist.errors import OutputExistsError, UnirecError

log = logging.getLogger(__name__)

MARKER = ".unirec-partial"
_live: set[Path] = set()     # temp dirs this process is writing (removed on a forced exit)


class OutputError(UnirecError):
    """An output cannot be written (read-only file system, disk full, no permission)."""


def os_reason(e: OSError) -> str:
    """The operating system's reason in a few words (`strerror`, else the exception's first line)."""
    if e.strerror:
        return e.strerror
    # pyarrow's IO errors carry the reason only in their text: "... Detail: [errno 28] No space left on device"
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text.rsplit("] ", 1)[-1] if "[errno" in text.lower() else text


def output_error(path: str | os.PathLike, e: OSError) -> OutputError:
    return OutputError(f"cannot write {path}: {os_reason(e)}")


def check_output_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    """Fail fast (before any work) when `out` exists and `overwrite` is not set."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output {out} already exists")
    return out


def _process_start(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid())}


def _abandoned(tmp: Path) -> bool:
    """True when `tmp` carries our marker and the process that wrote it (on this host) is gone."""
    try:
        owner = json.loads((tmp / MARKER).read_text())
        host, pid, started = owner["host"], int(owner["pid"]), owner["started"]
    except (OSError, ValueError, KeyError, TypeError):
        return False     # no marker (not ours) or one being written: leave it
    if host != socket.gethostname():
        return False     # another machine's run on a shared file system: cannot tell, leave it
    now = _process_start(pid)
    return now is None or (started is not None and abs(now - float(started)) > 1.0)   # gone, or pid reused


def remove_leftovers(parent: Path, name: str) -> list[Path]:
    """Remove the temp dirs of `parent/name` that a killed run of ours left behind."""
    removed: list[Path] = []
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(f".{name}.tmp-") and p.is_dir()]
    except OSError:
        return removed
    for p in candidates:
        if _abandoned(p):
            shutil.rmtree(p, ignore_errors=True)
            log.info("removed %s, left by an interrupted run", p)
            removed.append(p)
    return removed


def make_temp_dir(out: Path) -> Path:
    """A fresh marked temp dir beside `out` (after removing abandoned ones); OSError -> OutputError."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(out.parent, out.name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            (tmp / MARKER).write_text(json.dumps(_owner()))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as e:
        raise output_error(out, e) from None
    _live.add(tmp)
    return tmp


def remove_live_temp_dirs() -> None:
    """Remove every temp dir this process is still writing (signals.py, before a forced exit)."""
    for tmp in list(_live):
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temp dir; on success it replaces `out`, on error it is removed.

    The temp dir lives in `out`'s parent so the final step is a same-filesystem rename.
    """
    out = check_output_dir(out, overwrite)
    tmp = make_temp_dir(out)
    try:
        yield tmp
        (tmp / MARKER).unlink()
        publish_dir(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise output_error(out, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _live.discard(tmp)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp file path (in a marked temp dir beside `path`); on success it replaces `path`.

    The caller checks `path` beforehand (it may be replaced: the caller's --overwrite)."""
    path = Path(path)
    tmp = make_temp_dir(path)
    try:
        yield tmp / path.name
        os.replace(tmp / path.name, path)
    except OSError as e:
        raise output_error(path, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _live.discard(tmp)


def publish_dir(tmp: Path, out: Path) -> None:
    """Move a completed `tmp` dir to `out`, replacing an existing `out` last."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
