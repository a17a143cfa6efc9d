"""Fault injection for crash tests: a process hard-exits at a named point when the environment asks.

Named points sit at the steps that must survive a crash: each step of publishing a checkpoint
(`checkpoint.files_written`, `checkpoint.manifest_written`, `checkpoint.renamed`,
`checkpoint.pointer_written`, `checkpoint.pruning`) and the end of every training step
(`train.step-<N>`, N the global step). Nothing happens unless a test sets:

    UNIREC_FAULT=<point>[#<n>]   exit (os._exit(137), no cleanup, like kill -9) the n-th time
                                  (default 1st) this process reaches <point>
    UNIREC_FAULT_ACTION=hang      stop there instead (sleep until killed), like a process whose
                                  machine stopped answering; the test then kills what it chooses
    UNIREC_FAULT_RANK=<r>         only on the process whose RANK environment variable is r
    UNIREC_FAULT_ONCE=<file>      only if <file> does not exist; it is created first, so a
                                  restarted process passes the point
    UNIREC_FAULT_TRACE=<file>     append "<point> <rank> <pid>" for every point reached

Tests inject the fault from outside (environment of a subprocess or of Ray's workers); no
library function takes a test-only parameter.
"""
from __future__ import annotations

import os
import threading
from collections import Counter

_hits: Counter[str] = Counter()


def fault_point(name: str) -> None:
    """A named crash point (see the module docstring); free when no UNIREC_FAULT* variable is set."""
    trace = os.environ.get("UNIREC_FAULT_TRACE")
    spec = os.environ.get("UNIREC_FAULT")
    if not trace and not spec:
        return
    rank = os.environ.get("RANK", "0")
    if trace:
        with open(trace, "a") as f:
            f.write(f"{name} {rank} {os.getpid()}\n")
    if not spec:
        return
    point, _, nth = spec.partition("#")
    if point != name:
        return
    want_rank = os.environ.get("UNIREC_FAULT_RANK")
    if want_rank is not None and want_rank != rank:
        return
    _hits[name] += 1
    if _hits[name] != int(nth or 1):
        return
    once = os.environ.get("UNIREC_FAULT_ONCE")
    if once:
        if os.path.exists(once):
            return
        open(once, "w").close()
    if os.environ.get("UNIREC_FAULT_ACTION") == "hang":
        threading.Event().wait()
    os._exit(137)
