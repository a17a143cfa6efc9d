"""Schema of a fine-tuning YAML (configs/finetune/*.yaml), read by `unirec finetune`.

The model architecture (embedding dim, item features, encoder) is NOT configured here: it comes
from the pretrained checkpoint's manifest. The target vocab sizes come from the target dataset.
Sections: data (target dataset), task, optim, trainer (as in configs/pretrain, see
config/train.py), plus

    init:   how the target vocab is aligned to the pretrained one
            align: raw_id | column       raw_id: same raw item id = same item;
                                         column: same value of align_column in the two raw item
                                         tables (e.g. [title, year]) = same item
            align_column: [title, year]  raw item-table columns forming the key (column mode)
            min_overlap: 0.1             share of target items that must align, else an error
            min_feature_agreement: 0.5   aligned items must agree on the shared categorical
                                         features (e.g. year) this often, else an error (catches
                                         raw ids that name different items in the two datasets)
            align_users: true            align the user table by raw id (false: all users new)
            new_items: content           new item id rows start at zero, so the pretrained content
                                         embedding carries them; "random": the default init
            scratch: false               true: same architecture, NO pretrained weights (the
                                         from-scratch baseline of bench/transfer.py)
            source_data: null            the pretraining dataset dir (default: the checkpoint's)
    freeze: embeddings: false            true: pretrained embedding rows are frozen (new rows of
                                         the target still train)
            encoder: false               true: the encoder is frozen
            lr_multipliers: {embedding: 1.0, encoder: 1.0, head: 1.0}   x optim.lr per group

Example::

    name: ml-100k-from-ml-1m
    data: {path: data/prepared/ml-100k, fraction: 1.0}
    task: {kind: retrieval}
    init: {align: column, align_column: [title, year], min_overlap: 0.5}
    freeze: {embeddings: false, encoder: false, lr_multipliers: {embedding: 0.5, encoder: 0.5, head: 1.0}}
    optim: {lr: 0.001}
    trainer: {max_epochs: 20}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from unirec_dist.config.train import (
    DataSection,
    OptimSection,
    TaskSection,
    TrainerSection,
    _check,
)


@dataclass
class FinetuneDataSection(DataSection):
    # None: the pretrained model's max_len (its position table has that many rows)
    max_len: int | None = None  # type: ignore[assignment]
    fraction: float = 1.0       # share of the target's training users (histories) used, by seed

    def validate(self) -> None:
        _check(self.max_len is None or self.max_len >= 1, "data.max_len", f"must be >= 1 or null, got {self.max_len}")
        _check(self.batch_size >= 1, "data.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.valid_batch_size >= 1, "data.valid_batch_size", f"must be >= 1, got {self.valid_batch_size}")
        _check(self.valid_max_users is None or self.valid_max_users >= 1, "data.valid_max_users",
               f"must be >= 1 or null, got {self.valid_max_users}")
        _check(0.0 < self.fraction <= 1.0, "data.fraction", f"must be in (0, 1], got {self.fraction}")


@dataclass
class InitSection:
    align: Literal["raw_id", "column"] = "raw_id"
    align_column: list[str] = field(default_factory=list)
    min_overlap: float = 0.1
    min_feature_agreement: float = 0.5
    align_users: bool = True
    new_items: Literal["content", "random"] = "content"
    scratch: bool = False
    source_data: str | None = None

    def validate(self) -> None:
        _check(0.0 <= self.min_overlap <= 1.0, "init.min_overlap", f"must be in [0, 1], got {self.min_overlap}")
        _check(0.0 <= self.min_feature_agreement <= 1.0, "init.min_feature_agreement",
               f"must be in [0, 1], got {self.min_feature_agreement}")
        if self.align == "column":
            _check(bool(self.align_column), "init.align_column",
                   "init.align column needs the raw item-table column(s) to align by, e.g. [title, year]")


@dataclass
class LrMultipliers:
    embedding: float = 1.0
    encoder: float = 1.0
    head: float = 1.0

    def validate(self) -> None:
        for k in ("embedding", "encoder", "head"):
            v = getattr(self, k)
            _check(v >= 0, f"freeze.lr_multipliers.{k}", f"must be >= 0, got {v}")


@dataclass
class FreezeSection:
    embeddings: bool = False
    encoder: bool = False
    lr_multipliers: LrMultipliers = field(default_factory=LrMultipliers)


@dataclass
class FinetuneConfig:
    data: FinetuneDataSection
    name: str = "finetune"
    task: TaskSection = field(default_factory=TaskSection)
    optim: OptimSection = field(default_factory=OptimSection)
    trainer: TrainerSection = field(default_factory=lambda: TrainerSection(out_dir="runs/finetune"))
    init: InitSection = field(default_factory=InitSection)
    freeze: FreezeSection = field(default_factory=FreezeSection)

    def validate(self) -> None:
        if self.task.augment.contrastive_weight > 0:
            _check(self.task.augment.active, "task.augment.contrastive_weight",
                   "needs at least one augmentation (crop, mask or reorder) > 0")


def load_finetune_config(path, overrides: list[str] | None = None) -> FinetuneConfig:
    from unirec_dist.config.loader import load_config

    return load_config(FinetuneConfig, path, overrides)
