"""Schema of a pretraining YAML: the training schema (config/train.py) plus a `distributed:` section.

Every key of `distributed` has a default, so any training YAML is also a pretraining YAML::

    distributed:
      workers: 2                      # Ray Train workers (CLI --workers overrides)
      device: auto                    # auto | cpu | cuda  (cuda: NCCL, one GPU per worker)
      address: null                   # null: embedded local Ray cluster; or host:port / ray://...
      sharding: {t_item: row_wise}    # table -> table_wise | row_wise | column_wise | ...
      table_optimizer: {kind: auto, lr: null}
      checkpoint_every_n_steps: 50    # 0: only at the end
      keep_last: 2
      max_failures: 3                 # worker-group restarts from the latest checkpoint (-1: unlimited)
      memory_gb: null                 # per device, for the planner (null: measured)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from unirec_dist.config.train import TrainConfig
from unirec_dist.errors import ConfigError


@dataclass
class TableOptimizerSection:
    # auto: adam on CUDA (fused), adagrad on CPU (fused Adam does not run on CPU)
    kind: Literal["auto", "sgd", "adagrad", "rowwise_adagrad", "adam"] = "auto"
    lr: float | None = None          # null: optim.lr for adam, 0.05 for adagrad/rowwise_adagrad/sgd
    eps: float = 1e-8
    weight_decay: float = 0.0

    def validate(self) -> None:
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"distributed.table_optimizer.lr: must be > 0, got {self.lr}")

    def resolve(self, device_type: str, dense_lr: float) -> tuple[str, float]:
        kind = self.kind
        if kind == "auto":
            kind = "adam" if device_type == "cuda" else "adagrad"
        lr = self.lr if self.lr is not None else (dense_lr if kind == "adam" else 0.05)
        return kind, lr


@dataclass
class DistributedSection:
    workers: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    address: str | None = None
    sharding: dict[str, str] = field(default_factory=dict)
    table_optimizer: TableOptimizerSection = field(default_factory=TableOptimizerSection)
    checkpoint_every_n_steps: int = 0
    keep_last: int = 2
    max_failures: int = 3
    memory_gb: float | None = None
    cpus_per_worker: int = 1
    storage_path: str | None = None   # Ray run storage (default: <out_dir>/ray); shared on a cluster

    def validate(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"distributed.workers: must be >= 1, got {self.workers}")
        if self.checkpoint_every_n_steps < 0:
            raise ConfigError("distributed.checkpoint_every_n_steps: must be >= 0")
        if self.keep_last < 1:
            raise ConfigError(f"distributed.keep_last: must be >= 1, got {self.keep_last}")
        if self.max_failures < -1:
            raise ConfigError("distributed.max_failures: must be >= -1 (-1: unlimited)")
        if self.cpus_per_worker < 1:
            raise ConfigError("distributed.cpus_per_worker: must be >= 1")
        from unirec_dist.embeddings.sharding import SHARDING_TYPES

        for table, st in self.sharding.items():
            if st not in SHARDING_TYPES:
                raise ConfigError(
                    f"distributed.sharding.{table}: unknown sharding type {st!r}; expected one of {', '.join(SHARDING_TYPES)}"
                )


@dataclass
class PretrainConfig(TrainConfig):
    distributed: DistributedSection = field(default_factory=DistributedSection)

    def validate(self) -> None:
        super().validate()
        # Every sharded table runs on FBGEMM's fused kernel (data_parallel is refused, see
        # embeddings/sharding.py), and that kernel asserts embedding_dim % 4 == 0 deep inside the
        # workers; say it here, before any worker starts.
        dim = self.model.embedding.dim
        if dim % 4:
            raise ConfigError(
                f"model.embedding.dim: sharded tables need a multiple of 4 (FBGEMM fused kernel), got {dim}; "
                f"use {dim - dim % 4} or {dim - dim % 4 + 4}"
            )


def load_pretrain_config(path, overrides: list[str] | None = None) -> PretrainConfig:
    from unirec_dist.config.loader import load_config

    return load_config(PretrainConfig, path, overrides)
