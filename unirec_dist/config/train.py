"""Schema of a training YAML (configs/pretrain/*.yaml), read by `unirec train`.

Sections: data, model (embedding, encoder), task (kind, multi-task weights, each registered
task's section: retrieval, rating, ctr; augmentation), optim, trainer. Every key has a default except data.path; unknown keys, wrong
types and out-of-range values are `ConfigError`s naming the dotted key (see config/loader.py).

Example::

    name: ml-1m-sasrec
    data: {path: data/ml-1m, max_len: 200, batch_size: 128, train_on: train}
    model:
      embedding: {dim: 50, item_features: []}
      # kind picks a registered encoder (models/encoders/registry.py); the other keys are
      # that encoder's own config fields (e.g. SASRecConfig in models/encoders/sasrec.py)
      encoder: {kind: sasrec, num_blocks: 2, num_heads: 1, ffn_dim: 50, dropout: 0.2}
    task:
      kind: retrieval
      retrieval: {loss: sampled_softmax, num_negatives: 128, temperature: 0.05}
    optim: {lr: 0.001, weight_decay: 0.0}
    trainer: {max_epochs: 100, seed: 42}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from unirec_dist.errors import ConfigError
from unirec_dist.models.encoders.base import EncoderConfig
from unirec_dist.models.encoders.registry import DEFAULT_ENCODER, ENCODERS
from unirec_dist.tasks.base import Objective, TaskConfig
from unirec_dist.tasks.registry import MULTI, TASKS

REPEAT_MASK_MAX = 0.05


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclass
class DataSection:
    path: str                                   # prepared dataset directory
    train_on: Literal["train", "train+valid"] = "train"   # train+valid: append the valid target
    max_len: int = 200                          # items the encoder reads (training sequences keep max_len + 1)
    batch_size: int = 128                       # sequences per batch
    length_grouped: bool = True                 # batch sequences of similar length (less padding)
    valid_batch_size: int = 512
    valid_max_users: int | None = None          # evaluate on a fixed random subset (None: all)
    # ingestion (training/data.py): each worker streams its share of the train rows in units of
    # unit_rows rows through a buffer of buffer_batches batches; "auto" keeps a worker's train data
    # in memory below ingest_memory_mb (same batches either way), "memory"/"stream" force one
    ingest: Literal["auto", "memory", "stream"] = "auto"
    ingest_memory_mb: float = 256.0
    unit_rows: int = 1024
    buffer_batches: int = 64

    def validate(self) -> None:
        _check(self.max_len >= 1, "data.max_len", f"must be >= 1, got {self.max_len}")
        _check(self.batch_size >= 1, "data.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.valid_batch_size >= 1, "data.valid_batch_size", f"must be >= 1, got {self.valid_batch_size}")
        _check(self.valid_max_users is None or self.valid_max_users >= 1, "data.valid_max_users",
               f"must be >= 1 or null, got {self.valid_max_users}")
        _check(self.ingest_memory_mb >= 0, "data.ingest_memory_mb", f"must be >= 0, got {self.ingest_memory_mb}")
        _check(self.unit_rows >= 1, "data.unit_rows", f"must be >= 1, got {self.unit_rows}")
        _check(self.buffer_batches >= 1, "data.buffer_batches", f"must be >= 1, got {self.buffer_batches}")


@dataclass
class EmbeddingSection:
    dim: int = 50
    # item features from the dataset manifest added to the id embedding ("*" = all)
    item_features: list[str] = field(default_factory=lambda: ["*"])
    item_id: bool = True                        # False: content only (every item, even unseen, alike)
    user_id: bool = False                       # a user id table (always on for encoders that read it: mf)
    init_std: float | None = 0.02               # std of the tables' uniform init (null: 1/sqrt(dim) bound)

    def validate(self) -> None:
        _check(self.dim >= 1, "model.embedding.dim", f"must be >= 1, got {self.dim}")
        _check(self.init_std is None or self.init_std > 0, "model.embedding.init_std",
               f"must be > 0 or null, got {self.init_std}")


@dataclass
class ModelSection:
    embedding: EmbeddingSection = field(default_factory=EmbeddingSection)
    # one registered encoder's config dataclass, picked by its `kind` (models/encoders/registry.py)
    encoder: EncoderConfig = field(default_factory=lambda: ENCODERS[DEFAULT_ENCODER].config())
    normalize: bool = True                      # L2-normalise query and item vectors

    def validate(self) -> None:
        self.encoder.validate_for_model(self.embedding.dim)

    @property
    def user_table(self) -> bool:
        """Whether the model has a user id table (asked for, or read by the encoder)."""
        return self.embedding.user_id or self.encoder.encoder_class.needs_user_vectors


@dataclass
class AugmentSection:
    crop: float = 0.0                           # probability a sequence is cropped to a random span
    crop_ratio: float = 0.8                     # kept share of a cropped sequence
    mask: float = 0.0                           # per-item probability of being dropped
    reorder: float = 0.0                        # probability a random span is shuffled
    reorder_ratio: float = 0.2
    contrastive_weight: float = 0.0             # > 0: two augmented views + InfoNCE (CL4SRec-style)
    contrastive_temperature: float = 1.0

    def validate(self) -> None:
        for k in ("crop", "mask", "reorder"):
            v = getattr(self, k)
            _check(0.0 <= v <= 1.0, f"task.augment.{k}", f"must be in [0, 1], got {v}")
        for k in ("crop_ratio", "reorder_ratio"):
            v = getattr(self, k)
            _check(0.0 < v <= 1.0, f"task.augment.{k}", f"must be in (0, 1], got {v}")
        _check(self.contrastive_weight >= 0, "task.augment.contrastive_weight",
               f"must be >= 0, got {self.contrastive_weight}")
        _check(self.contrastive_temperature > 0, "task.augment.contrastive_temperature",
               f"must be > 0, got {self.contrastive_temperature}")

    @property
    def active(self) -> bool:
        return self.crop > 0 or self.mask > 0 or self.reorder > 0


@dataclass
class TaskSection:
    """`task`: which registered task(s) train the model (tasks/registry.py) and each one's config.

    `kind` names one registered task, or `multi` with `weights` (task name -> loss weight). Each
    registered task's config dataclass is the section `task.<name>` (e.g. `task.retrieval`), read
    as an attribute (`cfg.task.retrieval`) and kept in `sections`; the loader builds those from
    `registered_sections()` with the same strict key checks as any other section.
    """

    kind: str = "retrieval"                     # a registered task or "multi"
    weights: dict[str, float] = field(default_factory=dict)   # multi: task name -> loss weight
    # task name -> its config dataclass, one per registered task (defaults for those not given)
    sections: dict[str, TaskConfig] = field(default_factory=dict)
    augment: AugmentSection = field(default_factory=AugmentSection)

    def __post_init__(self) -> None:
        given = self.sections
        self.sections = {name: given[name] if name in given else entry.config() for name, entry in TASKS.items()}

    @classmethod
    def registered_sections(cls) -> dict[str, type]:
        """The loader's hook: section name -> config dataclass, one per registered task."""
        return {name: entry.config for name, entry in TASKS.items()}

    def __getattr__(self, name: str) -> Any:
        # cfg.task.<name>: a registered task's section (only called when normal lookup fails)
        sections = self.__dict__.get("sections")
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def validate(self) -> None:
        if self.kind != MULTI:
            _check(self.kind in TASKS, "task.kind", TASKS.unknown(self.kind, (MULTI,)))
            return
        _check(bool(self.weights), "task.weights", "task.kind multi needs weights, e.g. {retrieval: 1.0, rating: 0.5}")
        for k, w in self.weights.items():
            _check(k in TASKS, f"task.weights.{k}", f"unknown task; valid: {', '.join(TASKS)}")
            _check(w >= 0, f"task.weights.{k}", f"must be >= 0, got {w}")

    @property
    def active_tasks(self) -> dict[str, float]:
        return dict(self.weights) if self.kind == MULTI else {self.kind: 1.0}

    def config(self, name: str) -> TaskConfig:
        """The config dataclass of registered task `name` (`task.<name>`)."""
        return self.sections[name]

    def objectives(self) -> dict[str, type[Objective]]:
        """The active tasks' objective classes (in `active_tasks` order)."""
        return {name: TASKS[name].objective for name in self.active_tasks}

    def monitor(self) -> tuple[str, str]:
        """(metric, "max" or "min") ranking checkpoints: the `monitor` of the first active task in
        registration order (retrieval NDCG@10, then rating RMSE, then CTR AUC)."""
        active = self.active_tasks
        return next(entry.objective.monitor for name, entry in TASKS.items() if name in active)


@dataclass
class OptimSection:
    name: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    # the embedding tables' optimizer where they are sharded (`unirec pretrain`: fused into the
    # backward pass, so only FBGEMM's kernels run); auto: adam on CUDA, adagrad on CPU, where
    # fused Adam does not exist. `unirec train` updates its tables with `name` (auto or the same).
    tables: Literal["auto", "sgd", "adagrad", "rowwise_adagrad", "adam"] = "auto"

    def validate(self) -> None:
        _check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
               f"must be two numbers in [0, 1), got {self.betas}")


@dataclass
class TrainerSection:
    max_epochs: int = 10
    max_steps: int = -1                         # -1: no step limit
    max_minutes: float | None = None            # stop after this much training wall time
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = 2                     # torch CPU threads (None: torch's default)
    out_dir: str = "runs/train"                 # checkpoints/ and logs/ go here
    loggers: list[Literal["csv", "tensorboard", "mlflow"]] = field(default_factory=lambda: ["csv"])
    # mlflow's tracking server (http(s)://host:port) or store (file:PATH); null: file:<out_dir>/mlruns
    mlflow_uri: str | None = None
    progress_bar: bool = True
    val_every_n_epochs: int = 1
    # validation ranking removes each query's history items; null: from the dataset, masked only
    # when repeats are rare (split.repeat_rate of the valid targets < REPEAT_MASK_MAX)
    val_mask_seen: bool | None = None
    log_every_n_steps: int = 20
    limit_train_batches: int | float = 1.0
    early_stop_patience: int | None = None      # validations without NDCG@10 improvement
    checkpoint_every_n_epochs: int = 1          # checkpoint cadence, pointer "last" (0: only at the end)
    keep_last: int = 2                          # step folders kept (plus the "best" pointer's target)
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"

    def validate(self) -> None:
        _check(self.max_epochs >= 1, "trainer.max_epochs", f"must be >= 1, got {self.max_epochs}")
        _check(self.max_steps == -1 or self.max_steps >= 1, "trainer.max_steps",
               f"must be -1 or >= 1, got {self.max_steps}")
        _check(self.max_minutes is None or self.max_minutes > 0, "trainer.max_minutes",
               f"must be > 0 or null, got {self.max_minutes}")
        _check(self.threads is None or self.threads >= 1, "trainer.threads", f"must be >= 1, got {self.threads}")
        _check(self.val_every_n_epochs >= 1, "trainer.val_every_n_epochs",
               f"must be >= 1, got {self.val_every_n_epochs}")
        _check(self.log_every_n_steps >= 1, "trainer.log_every_n_steps", f"must be >= 1, got {self.log_every_n_steps}")
        _check(self.limit_train_batches > 0, "trainer.limit_train_batches",
               f"must be > 0, got {self.limit_train_batches}")
        _check(self.early_stop_patience is None or self.early_stop_patience >= 1, "trainer.early_stop_patience",
               f"must be >= 1 or null, got {self.early_stop_patience}")
        _check(self.checkpoint_every_n_epochs >= 0, "trainer.checkpoint_every_n_epochs",
               f"must be >= 0, got {self.checkpoint_every_n_epochs}")
        _check(self.keep_last >= 1, "trainer.keep_last", f"must be >= 1, got {self.keep_last}")
        _check(self.mlflow_uri is None or self.mlflow_uri.split(":", 1)[0] in ("file", "http", "https"),
               "trainer.mlflow_uri", f"must start with file:, http:// or https://, got {self.mlflow_uri!r}")


@dataclass
class TrainConfig:
    data: DataSection
    name: str = "train"
    model: ModelSection = field(default_factory=ModelSection)
    task: TaskSection = field(default_factory=TaskSection)
    optim: OptimSection = field(default_factory=OptimSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)

    def validate(self) -> None:
        kind = self.model.encoder.kind
        reads_history = self.model.encoder.encoder_class.reads_history
        sequence_encoders = ", ".join(k for k, e in ENCODERS.items() if e.encoder.reads_history)
        for name, objective in self.task.objectives().items():
            if objective.reads_history and not reads_history:
                raise ConfigError(f"task.kind: {name} needs a sequence encoder ({sequence_encoders}), not {kind}")
        if self.task.augment.contrastive_weight > 0:
            _check(self.task.augment.active, "task.augment.contrastive_weight",
                   "needs at least one augmentation (crop, mask or reorder) > 0")
            _check(reads_history, "task.augment.contrastive_weight",
                   f"needs a sequence encoder ({sequence_encoders}), not {kind}")
        # augmentation moves items without their timestamps
        _check(not (self.model.encoder.uses_times and self.task.augment.active), "model.encoder.time_bias",
               "cannot be combined with task.augment (crop/mask/reorder do not carry timestamps)")


def load_train_config(path, overrides: list[str] | None = None) -> TrainConfig:
    from unirec_dist.config.loader import load_config

    return load_config(TrainConfig, path, overrides)


def resolve_val_mask_seen(trainer: TrainerSection, ds_manifest: dict) -> tuple[bool, str]:
    """trainer.val_mask_seen as given, or (null) from the dataset's repeat rate: masking the seen
    items is right when the next item is almost never one consumed before (MovieLens), and caps
    the metric when most are (baskets, music). Returns (mask, why) for the log."""
    if trainer.val_mask_seen is not None:
        return trainer.val_mask_seen, "trainer.val_mask_seen in the config"
    rate = ((ds_manifest.get("split") or {}).get("repeat_rate") or {}).get("valid")
    if rate is None:
        return False, "the dataset records no repeat rate (prepared before it was measured; prepare it again)"
    mask = rate < REPEAT_MASK_MAX
    return mask, (f"{rate:.1%} of validation targets were consumed before "
                  f"({'<' if mask else '>='} {REPEAT_MASK_MAX:.0%}; trainer.val_mask_seen: null)")
