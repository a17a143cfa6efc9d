"""The same `Recommender` and HTTP app as a Ray Serve deployment with replicas.

Locally (what `unirec serve --ray --replicas N` does)::

    app = build_app("runs/demo/bundle", replicas=2)
    serve.run(app, name="unirec", route_prefix="/")          # after ray.init / serve.start

On a cluster (bundle on storage every node can read; unirec_dist installed in the image)::

    ray start --head ...                                       # or a KubeRay RayService
    serve run unirec_dist.serving.ray_app:app_builder bundle=/shared/bundle replicas=4 index=hnsw
    # or, in a Serve config file (`serve deploy serve.yaml`):
    #   applications:
    #   - name: unirec
    #     route_prefix: /
    #     import_path: unirec_dist.serving.ray_app:app_builder
    #     args: {bundle: /shared/bundle, replicas: 4, index: exact, cpus_per_replica: 2}

Each replica loads the bundle once in its constructor and serves the FastAPI app of
`unirec_dist.serving.app` (same routes, schema and validation); Ray's proxy balances requests
across replicas. Replicas are independent, so throughput scales with them; latency per request
is that of one replica plus the proxy hop.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

import ray
from ray import serve

from unirec_dist.errors import UnirecError
from unirec_dist.serving.config import BatchingConfig
from unirec_dist.utils.device import configure_cpu
from unirec_dist.utils.logging import quiet_noisy_loggers
from unirec_dist.utils.ray_cluster import init_ray, shutdown_ray

log = logging.getLogger(__name__)

_PKG_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding unirec_dist/


@serve.ingress()
class RecommenderReplica:
    """One replica: the bundle's Recommender and the HTTP app of unirec_dist.serving.app over it."""

    def __init__(self, bundle: str, threads: int | None, options: dict[str, Any], max_body_bytes: int,
                 batching: dict[str, Any] | None) -> None:
        # the replica's own imports: the driver that builds the application needs no torch
        from unirec_dist.serving.recommender import Recommender

        quiet_noisy_loggers()
        configure_cpu(int(threads) if threads else None)
        self.rec = Recommender.from_bundle(bundle, **options)
        self.max_body_bytes = max_body_bytes
        self.batching = batching
        if batching is not None:
            self.recommend_batch.set_max_batch_size(int(batching["max_batch_size"]))
            self.recommend_batch.set_batch_wait_timeout_s(float(batching["max_wait_ms"]) / 1000.0)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)
    async def recommend_batch(self, queries: list[Any]) -> list[Any]:
        """Ray Serve's micro-batching: the queries that arrived together, answered in one
        `recommend_many` call in a worker thread (off the replica's event loop)."""
        return await asyncio.to_thread(self.rec.recommend_many, queries)

    def __serve_build_asgi_app__(self):
        from unirec_dist.serving.app import create_app

        return create_app(self.rec, max_body_bytes=self.max_body_bytes,
                          recommend_batched=None if self.batching is None else self.recommend_batch)


# The deployment, declared once; `build_app` sets its name, replicas and resources per application
# with `.options(...)` and binds the bundle. The FastAPI app is built in each replica
# (`__serve_build_asgi_app__`), over the Recommender its constructor loaded.
RecommenderDeployment = serve.deployment(RecommenderReplica, name="UnirecRecommender")


def build_app(bundle: str | os.PathLike, replicas: int = 1, cpus_per_replica: float = 1.0,
              threads: int | None = None, name: str = "UnirecRecommender", max_body_bytes: int = 1 << 20,
              batching: Any = "default", **options: Any):
    """A bound Ray Serve application: `replicas` copies of the HTTP app over `bundle`.

    batching: a BatchingConfig (or its keys as a dict) for Ray's `@serve.batch` on /recommend,
    "default" for BatchingConfig(), None for one request at a time.
    options go to `Recommender.from_bundle` (index, ef_search, max_k, max_history, hnsw).
    """
    bundle = str(Path(bundle).resolve())
    if batching == "default":
        batching = BatchingConfig()
    elif isinstance(batching, dict):
        batching = BatchingConfig(**batching)
    if batching is not None:
        batching.validate()
        batching = dataclasses.asdict(batching)   # plain data for the replica's constructor

    deployment = RecommenderDeployment.options(
        name=name,
        num_replicas=int(replicas),
        ray_actor_options={
            "num_cpus": float(cpus_per_replica),
            # workers must import unirec_dist even when it is not pip-installed (a source checkout)
            "runtime_env": {"env_vars": {"PYTHONPATH": _pythonpath()}},
        },
    )
    return deployment.bind(bundle, threads, dict(options), int(max_body_bytes), batching)


def _pythonpath() -> str:
    cur = os.environ.get("PYTHONPATH")
    return _PKG_ROOT + (os.pathsep + cur if cur else "")


def app_builder(args: dict[str, Any]):
    """Entry point for `serve run unirec_dist.serving.ray_app:app_builder bundle=... replicas=...`
    and Serve config files (`import_path` + `args`)."""
    args = dict(args)
    if "bundle" not in args:
        raise UnirecError("app_builder needs bundle=<path to a bundle directory>")
    conv = {"replicas": int, "cpus_per_replica": float, "threads": int, "ef_search": int, "max_k": int,
            "max_history": int, "index": str, "max_body_bytes": int, "max_batch_size": int, "max_wait_ms": float}
    unknown = set(args) - set(conv) - {"bundle", "batching"}
    if unknown:
        raise UnirecError(f"app_builder: unknown argument(s) {sorted(unknown)}; known: batching, bundle, "
                          f"{', '.join(sorted(conv))}")
    kw = {k: conv[k](v) for k, v in args.items() if k in conv}
    if str(args.get("batching", "on")).lower() in ("off", "none", "false"):    # one request at a time
        kw.pop("max_batch_size", None), kw.pop("max_wait_ms", None)
        kw["batching"] = None
    else:
        kw["batching"] = {k: kw.pop(k) for k in ("max_batch_size", "max_wait_ms") if k in kw}
    return build_app(args["bundle"], **kw)


def start(bundle: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
          address: str | None = None, num_cpus: int | None = None, **kw: Any) -> str:
    """Start (or attach to) Ray, start Serve's HTTP proxy on host:port and deploy; returns the URL."""
    if address:
        init_ray(address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        init_ray(None, num_cpus=num_cpus, log_to_driver=False, logging_level=logging.WARNING)
    serve.start(http_options={"host": host, "port": int(port)})
    serve.run(build_app(bundle, replicas=replicas, **kw), name="unirec", route_prefix="/")
    return f"http://{host}:{port}"


def stop() -> None:
    try:
        serve.shutdown()
    finally:
        if ray.is_initialized():
            shutdown_ray()


def serve_blocking(bundle: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
                   address: str | None = None, **kw: Any) -> None:
    """`unirec serve --ray`: deploy, then wait until interrupted; shuts Serve down on exit."""
    url = start(bundle, host=host, port=port, replicas=replicas, address=address, **kw)
    print(f"serving {bundle} with Ray Serve ({replicas} replica(s)) on {url} (docs: /docs)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop()
