"""Schema of a serving YAML (configs/serve/*.yaml), read by `unirec serve --config`.

    bundle: runs/demo/bundle      # may also be given (or overridden) with --bundle
    host: 127.0.0.1               # loopback unless told otherwise
    port: 8000
    index: exact                  # exact | hnsw
    ef_search: null               # hnsw search breadth (null: the bundle's, else 128)
    hnsw: null                    # null: the bundle's prebuilt index (`export --ann hnsw`), else one
                                  # built with M 32, ef_construction 100. {M, ef_construction,
                                  # ef_search}: the prebuilt index when its M and ef_construction
                                  # are these, else one built with them
    max_k: 1000
    max_history: 2048
    max_body_bytes: 1048576       # larger request bodies get 413 before they are parsed
    threads: null                 # torch intra-op threads per worker/replica
    batching: {max_batch_size: 64, max_wait_ms: 0.0}
                                  # /recommend requests that arrive together are encoded and
                                  # ranked as one batch, off the event loop; null: one at a time
    ray: null                     # or {replicas: 2, cpus_per_replica: 1, address: null}

Command-line flags override the file; key=value overrides work as for every config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from unirec_dist.errors import ConfigError


@dataclass
class HNSWConfig:
    M: int = 32
    ef_construction: int = 100
    ef_search: int = 128

    def validate(self) -> None:
        if self.M < 2 or self.ef_construction < 1 or self.ef_search < 1:
            raise ConfigError("M must be >= 2, ef_construction and ef_search >= 1")


@dataclass
class BatchingConfig:
    """Micro-batching of /recommend. A batch starts as soon as the inference thread is free and
    takes every request queued by then (up to `max_batch_size`): under load, requests queue while
    the previous batch runs, so batches grow with the load and a lone request never waits.
    `max_wait_ms` > 0 also holds a batch open that long for more requests (bigger batches, at
    the cost of that much latency when traffic is light)."""
    max_batch_size: int = 64
    max_wait_ms: float = 0.0

    def validate(self) -> None:
        if not 1 <= self.max_batch_size <= 4096:
            raise ConfigError(f"batching.max_batch_size: must be in 1..4096, got {self.max_batch_size}")
        if not 0.0 <= self.max_wait_ms <= 1000.0:
            raise ConfigError(f"batching.max_wait_ms: must be in 0..1000 (milliseconds), got {self.max_wait_ms}")


@dataclass
class RayServeConfig:
    replicas: int = 1
    cpus_per_replica: float = 1.0
    address: str | None = None        # a running cluster (e.g. "auto"); null: start one locally

    def validate(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"ray.replicas: must be >= 1, got {self.replicas}")
        if self.cpus_per_replica <= 0:
            raise ConfigError(f"ray.cpus_per_replica: must be > 0, got {self.cpus_per_replica}")


@dataclass
class ServeConfig:
    bundle: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    index: Literal["exact", "hnsw"] = "exact"
    ef_search: int | None = None
    hnsw: HNSWConfig | None = None
    max_k: int = 1000
    max_history: int = 2048
    max_body_bytes: int = 1 << 20
    threads: int | None = None
    access_log: bool = False
    batching: BatchingConfig | None = field(default_factory=BatchingConfig)
    ray: RayServeConfig | None = None

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: must be in 0..65535, got {self.port}")
        if self.max_k < 1 or self.max_history < 1:
            raise ConfigError("max_k/max_history: must be >= 1")
        if self.ef_search is not None and self.ef_search < 1:
            raise ConfigError(f"ef_search: must be >= 1, got {self.ef_search}")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"max_body_bytes: must be >= 1024, got {self.max_body_bytes}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads: must be >= 1, got {self.threads}")

    def recommender_options(self) -> dict:
        """Keyword arguments for `Recommender.from_bundle`."""
        opts: dict[str, Any] = {"index": self.index, "max_k": self.max_k, "max_history": self.max_history,
                "ef_search": self.ef_search}
        if self.index == "hnsw" and self.hnsw is not None:
            opts["hnsw"] = {"M": self.hnsw.M, "ef_construction": self.hnsw.ef_construction,
                            "ef_search": self.ef_search or self.hnsw.ef_search}
        return opts
