"""SIGTERM and SIGINT end any `unirec` command within seconds, whatever it is doing.

Python runs signal handlers in the main thread between bytecodes, so the usual path is an
exception (SystemExit / KeyboardInterrupt) that unwinds through every `finally`: temp dirs are
removed (utils/atomic.py), an embedded Ray cluster is shut down. A main thread stuck inside one
long C call (a network wait, a native loop) never gets there; for that case a backstop thread
reads the interpreter's signal wakeup fd (written by the C-level handler at once, whatever the
main thread does) and, if the process is still alive `GRACE_S` seconds later, removes the temp
dirs still being written and exits. A Ray cluster we started is then stopped by its watchdog
(utils/ray_cluster.py), which sees this process gone.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

GRACE_S = 5.0
_installed = False


def _terminate(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def _backstop(fd: int, grace_s: float) -> None:
    wanted = {int(signal.SIGTERM), int(signal.SIGINT)}
    while True:
        try:
            data = os.read(fd, 64)
        except OSError:
            return
        got = [b for b in data if b in wanted]
        if got:
            break
    time.sleep(grace_s)
    from unirec_dist.utils.atomic import remove_live_temp_dirs

    remove_live_temp_dirs()
    try:
        print(f"error: stopped by signal {got[0]} (the command did not end within {grace_s:.0f} s)",
              file=sys.stderr, flush=True)
    finally:
        os._exit(128 + got[0])


def install(grace_s: float = GRACE_S) -> None:
    """Call once, from the main thread of a command-line process (not in library code)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    _installed = True
    signal.signal(signal.SIGTERM, _terminate)
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    threading.Thread(target=_backstop, args=(r, grace_s), daemon=True, name="unirec-signal-backstop").start()
