"""Running the HTTP app: in this process (the `unirec serve` path), in a background thread on a
free loopback port (tests), or in a child process (benchmarks, so client and server do not share
one interpreter)."""
from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket; port 0 picks a free port (read it back with getsockname())."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _config(app: Any, access_log: bool = False):
    import uvicorn

    # One worker process, one event loop; model work runs in FastAPI's thread pool.
    return uvicorn.Config(app, access_log=access_log, log_level="warning", lifespan="off")


def run(app: Any, host: str = "127.0.0.1", port: int = 8000, access_log: bool = False,
        sock: socket.socket | None = None) -> None:
    """Serve `app` in this process until interrupted."""
    import uvicorn

    sock = sock or bind_socket(host, port)
    h, p = sock.getsockname()[:2]
    log.info("serving on http://%s:%d (OpenAPI schema at /openapi.json, docs at /docs)", h, p)
    uvicorn.Server(_config(app, access_log)).run(sockets=[sock])


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", timeout_s: float = 30.0) -> Iterator[str]:
    """Serve `app` on a free port of `host` in a daemon thread; yields the base URL."""
    import uvicorn

    sock = bind_socket(host, 0)
    server = uvicorn.Server(_config(app))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    h, p = sock.getsockname()[:2]
    try:
        yield f"http://{h}:{p}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)
        sock.close()


def _child(bundle: str, sock: socket.socket, options: dict[str, Any]) -> None:
    from unirec_dist.serving.app import create_app
    from unirec_dist.serving.config import BatchingConfig
    from unirec_dist.serving.recommender import Recommender
    from unirec_dist.utils.logging import setup_cli_logging

    setup_cli_logging(False)
    threads = options.pop("threads", None)
    batching = options.pop("batching", None)
    fast_path = options.pop("fast_path", True)
    from unirec_dist.utils.device import configure_cpu

    configure_cpu(int(threads) if threads else None)
    rec = Recommender.from_bundle(bundle, **options)
    run(create_app(rec, batching=None if batching is None else BatchingConfig(**batching), fast_path=fast_path),
        sock=sock)


@contextlib.contextmanager
def serve_in_process(bundle: str, host: str = "127.0.0.1", timeout_s: float = 900.0,
                     **options: Any) -> Iterator[str]:
    """Serve a bundle from a spawned child process on a free port; yields the base URL once
    /health answers. `options` go to `Recommender.from_bundle` (plus `threads`, `batching`: the
    keys of a BatchingConfig, or None for one request at a time, and `fast_path`, see create_app)."""
    import multiprocessing as mp
    import urllib.request

    sock = bind_socket(host, 0)
    h, p = sock.getsockname()[:2]
    url = f"http://{h}:{p}"
    proc = mp.get_context("spawn").Process(target=_child, args=(str(bundle), sock, options), daemon=True)
    proc.start()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if not proc.is_alive():
                raise RuntimeError(f"server process exited with code {proc.exitcode}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become healthy in time")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
        sock.close()
