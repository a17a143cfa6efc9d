"""Private Ray APIs (see unirec_dist.compat)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["replace_print_worker_logs"]


def replace_print_worker_logs(printer: Callable[[dict[str, Any], Any, bool], None]) -> bool:
    """Route the driver's printing of worker output through `printer(data, print_file,
    ignore_prefix)` (once per process; later calls keep the first). Ray offers
    `log_to_driver=False` (all or nothing) but no public filter, so this replaces
    `ray._private.worker.print_worker_logs`, the function Ray's log listener calls per batch of
    lines. Returns False (Ray's own output stays) when that function is not where it was.
    """
    try:
        import ray._private.worker as rw
    except ImportError:
        log.warning("ray._private.worker is gone: worker output is not filtered")
        return False
    if not callable(getattr(rw, "print_worker_logs", None)):
        log.warning("ray._private.worker.print_worker_logs is gone: worker output is not filtered")
        return False
    if getattr(rw, "_unirec_original_print_worker_logs", None) is None:
        rw._unirec_original_print_worker_logs = rw.print_worker_logs
        rw.print_worker_logs = printer
    return True
