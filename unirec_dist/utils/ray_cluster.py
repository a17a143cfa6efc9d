"""Starting or joining Ray for a command: one implementation for prepare, pretrain and serve.

    init_ray(address, **ray_init_kwargs) -> True when we started (and own) a local cluster
    shutdown_ray()                       disconnect; stops the cluster we own and its watchdog

An address is checked with a TCP connect first (`check_address`), so a wrong one fails within
seconds with one line instead of Ray's endless reconnect loop. No address: always a new local
cluster of our own (`address="local"`), never one found running on this machine.

A local cluster must not outlive the command, even after a `kill -9` (which runs no cleanup).
Ray's processes (GCS, raylet, dashboard, runtime-env and dashboard agents, workers) inherit the
environment of the process that starts them, so before `ray.init` we put a fresh token into the
environment and start a watchdog process (its own session, so a signal to our group spares it):
when our process is gone it kills every process whose environment carries the token, and the
processes it saw below them (see `cluster_processes`). This
module imports only the standard library (psutil inside functions): the watchdog runs it as
`python -m unirec_dist.utils.ray_cluster --watch PID TOKEN`.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from urllib.parse import urlparse

from unirec_dist.errors import UnirecError

log = logging.getLogger(__name__)

TOKEN_ENV = "UNIREC_RAY_OWNER"
_watchdog: subprocess.Popen | None = None


class ClusterError(UnirecError):
    """The Ray cluster cannot run the job (unreachable, too small)."""


def check_address(address: str, timeout_s: float = 3.0) -> None:
    """A TCP connect to the Ray address (GCS port / client port / dashboard) within `timeout_s`."""
    if address in ("auto", "local"):
        return
    url = urlparse(address if "://" in address else f"tcp://{address}")
    try:
        host, port = url.hostname, url.port
    except ValueError:   # a port that is not a number
        host, port = None, None
    if not host or not port:
        raise ClusterError(f"Ray address {address!r}: expected host:port, ray://host:port or http://host:port")
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        raise ClusterError(f"Ray address {address} does not answer ({e.strerror or e}); is the cluster up?") from None


def init_ray(address: str | None = None, **kwargs) -> bool:
    """Join `address` (checked first) or start a local cluster of our own (returns True).

    Does nothing (returns False) when Ray is already initialized in this process."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        check_address(address)
        ray.init(address=address, **kwargs)
        return False
    kwargs.setdefault("include_dashboard", False)
    _start_watchdog()
    try:
        ray.init(address="local", **kwargs)
    except BaseException:
        shutdown_ray()    # whatever part of the cluster started, and the watchdog
        raise
    return True


def shutdown_ray() -> None:
    """`ray.shutdown()`; for a cluster we started, also kill what it leaves running (the
    dashboard and runtime-env agents outlive `ray.shutdown()`) and stop its watchdog."""
    global _watchdog
    import psutil
    import ray

    token = os.environ.get(TOKEN_ENV, "") if _watchdog is not None else ""
    ours = cluster_processes(token, root=psutil.Process()) if token else []
    ray.shutdown()
    if _watchdog is not None:
        sweep(token, ours)
        _watchdog.terminate()
        _watchdog.wait(timeout=10)
        _watchdog = None
        os.environ.pop(TOKEN_ENV, None)


def _start_watchdog() -> None:
    global _watchdog
    if _watchdog is not None and _watchdog.poll() is None:
        return
    token = f"{os.getpid()}-{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    _watchdog = subprocess.Popen(
        [sys.executable, "-m", "unirec_dist.utils.ray_cluster", "--watch", str(os.getpid()), token],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )
    os.environ[TOKEN_ENV] = token   # inherited by every process Ray starts from here on


def _carries(p, token: str) -> bool:
    import psutil

    try:
        return p.environ().get(TOKEN_ENV) == token
    except (psutil.Error, OSError):
        return False


def cluster_processes(token: str, root=None) -> list:
    """The processes of the cluster marked with `token`: those carrying it in their environment
    (GCS, raylet, workers) and everything below them. The agents the raylet starts are found
    only as its children: setproctitle ("ray::DashboardAgent") overwrites their environment."""
    import psutil

    if not token:
        return []
    me = os.getpid()
    pool = root.children(recursive=True) if root is not None else list(psutil.process_iter())
    found: dict[int, psutil.Process] = {}
    for p in pool:
        if p.pid in found or p.pid == me or not _carries(p, token):
            continue
        found[p.pid] = p
        try:
            found.update((c.pid, c) for c in p.children(recursive=True) if c.pid != me)
        except psutil.Error:
            pass
    return list(found.values())


def _kill(procs: list) -> None:
    import psutil

    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


def sweep(token: str, seen: list | None = None) -> None:
    """Kill the cluster's processes (`cluster_processes`), and those of `seen` still running
    (`is_running` compares start times, so a reused pid is spared)."""

    for _ in range(3):   # a process may start another while we kill: look again
        victims = cluster_processes(token)
        victims += [p for p in (seen or []) if p.is_running() and p.pid not in {v.pid for v in victims}]
        seen = None
        if not victims:
            return
        _kill(victims)


def watch(owner_pid: int, token: str, poll_s: float = 1.0) -> None:
    """While `owner_pid` runs, note its cluster's processes; when it is gone, kill them."""
    import psutil

    seen: dict[int, psutil.Process] = {}
    try:
        owner = psutil.Process(owner_pid)
        while owner.is_running() and owner.status() != psutil.STATUS_ZOMBIE:
            for p in cluster_processes(token, root=owner):
                seen.setdefault(p.pid, p)
            time.sleep(poll_s)
    except psutil.NoSuchProcess:
        pass
    sweep(token, list(seen.values()))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--watch":
        watch(int(sys.argv[2]), sys.argv[3])
