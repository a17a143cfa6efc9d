"""Schema of a pretraining YAML: the training schema (config/train.py) plus a `distributed:` section.

Every key of `distributed` has a default, so any training YAML is also a pretraining YAML::

    distributed:
      workers: 2                      # Ray Train workers (CLI --workers overrides)
      device: auto                    # auto | cpu | cuda  (cuda: NCCL, one GPU per worker)
      address: null                   # null: embedded local Ray cluster; or host:port / ray://...
      sharding: {t_item: row_wise}    # table -> table_wise | row_wise | column_wise | ...
      table_optimizer: {lr: null}     # the tables' optimizer itself is optim.tables
      checkpoint_every_n_steps: 50    # 0: only at the end
      keep_last: 2
      max_failures: 3                 # worker-group restarts from the latest checkpoint (-1: unlimited)
      placement_strategy: PACK        # PACK | SPREAD | STRICT_SPREAD | STRICT_PACK (workers over nodes)
      memory_gb: null                 # per device, for the planner (null: measured)
      resource_wait_s: null           # wait for the workers' CPUs/GPUs (null: 0 local, 600 joined)
      resume_from: null               # continue a pretraining checkpoint (model, optimizers, step,
                                      # data position) under this run's workers and plan (CLI --resume-from)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from unirec_dist.config.train import TrainConfig
from unirec_dist.errors import ConfigError


@dataclass
class TableOptimizerSection:
    """Settings of the fused table optimizer named by optim.tables (config/train.py)."""

    lr: float | None = None          # null: optim.lr for adam, 0.05 for adagrad/rowwise_adagrad/sgd
    eps: float = 1e-8
    weight_decay: float = 0.0

    def validate(self) -> None:
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"distributed.table_optimizer.lr: must be > 0, got {self.lr}")

    def resolve(self, tables: str, device_type: str, dense_lr: float) -> tuple[str, float]:
        """(optimizer, lr) of the sharded tables: optim.tables, auto resolved per device."""
        kind = tables
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
    # how Ray places the workers on the nodes (its placement-group strategies): PACK fills as few
    # nodes as it can, SPREAD prefers one worker per node, STRICT_SPREAD requires it, STRICT_PACK
    # requires one node for all
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK"] = "PACK"
    memory_gb: float | None = None
    cpus_per_worker: int = 1
    storage_path: str | None = None   # Ray run storage (default: <out_dir>/ray); shared on a cluster
    # how long the job asks for and waits for its workers' CPUs/GPUs (an autoscaling cluster adds
    # nodes, pods start late) before refusing; null: 0 on the embedded local cluster (it cannot
    # grow), 600 on a cluster joined with an address
    resource_wait_s: float | None = None
    # a pretraining checkpoint to continue (weights, optimizer state, global step, data position),
    # written by any number of workers under any plan: DCP reshards it onto this run's plan
    resume_from: str | None = None
    # TorchRec's TrainPipelineSparseDist: each batch's table input distribution runs while the
    # previous batch computes (training/pipeline.py); the loader then draws the negatives
    train_pipeline: Literal["none", "sparse_dist"] = "none"

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
        if self.resource_wait_s is not None and self.resource_wait_s < 0:
            raise ConfigError(f"distributed.resource_wait_s: must be >= 0, got {self.resource_wait_s}")
        from unirec_dist.embeddings.sharding import SHARDING_TYPES

        for table, st in self.sharding.items():
            if st not in SHARDING_TYPES:
                raise ConfigError(
                    f"distributed.sharding.{table}: unknown sharding type {st!r}; expected one of {', '.join(SHARDING_TYPES)}"
                )


@dataclass
class PretrainConfig(TrainConfig):
    # any model.embedding.dim: tables are stored rounded up to a multiple of 4, which FBGEMM's
    # fused kernel needs (embeddings/features.py `table_dim`)
    distributed: DistributedSection = field(default_factory=DistributedSection)

    def validate(self) -> None:
        super().validate()
        if self.distributed.train_pipeline != "none":
            self._check_pipeline()

    def _check_pipeline(self) -> None:
        """The train pipeline looks up, one batch ahead, every id the step uses: what the loader
        can know in advance (sequence items, users, uniform negatives of the retrieval loss)."""
        key = "distributed.train_pipeline"
        active = [k for k, w in self.task.active_tasks.items() if w]
        if active != ["retrieval"]:
            raise ConfigError(f"{key}: sparse_dist trains the retrieval task alone, not {', '.join(active)}")
        if self.task.retrieval.loss != "sampled_softmax":
            raise ConfigError(f"{key}: sparse_dist needs task.retrieval.loss sampled_softmax (its negatives are drawn "
                              f"by the loader), not {self.task.retrieval.loss}")
        if self.task.augment.active or self.task.augment.contrastive_weight > 0:
            raise ConfigError(f"{key}: sparse_dist does not run with task.augment (augmented sequences are not known "
                              "to the loader)")
        if not self.model.embedding.item_id:
            raise ConfigError(f"{key}: sparse_dist pipelines the item id table; model.embedding.item_id is false")


def load_pretrain_config(path, overrides: list[str] | None = None) -> PretrainConfig:
    from unirec_dist.config.loader import load_config

    return load_config(PretrainConfig, path, overrides)
