"""Tasks are plug-ins: a task defined and registered here, outside the package, is configured
from YAML keys and trains through the normal `train()` path, with no change to training/ or
serving/ code."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.unit.test_models import make_prepared
from tests.unit.test_train import _debug_cfg
from unirec_dist.errors import ConfigError, check
from unirec_dist.tasks.base import Objective, SeqForward, TaskConfig, TaskEntry
from unirec_dist.tasks.registry import TASKS


@dataclass
class ParityConfig(TaskConfig):
    """Predict whether the next item's id is even (a toy objective with a head of its own)."""
    scale: float = 1.0

    def validate(self) -> None:
        check(self.scale > 0, "task.parity.scale", f"must be > 0, got {self.scale}")


class ParityObjective(Objective):
    monitor = ("parity_acc", "max")

    def __init__(self, cfg: ParityConfig) -> None:
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: ParityConfig, n_items: int, item_counts: torch.Tensor | None) -> ParityObjective:
        return cls(cfg)

    @classmethod
    def build_head(cls, cfg: ParityConfig, dim: int) -> nn.Module:
        return nn.Linear(dim, 1)

    def __call__(self, model, f: SeqForward) -> torch.Tensor:
        logits = model.heads["parity"](f.states[f.valid]).squeeze(-1) * self.cfg.scale
        even = (f.ids[:, 1:][f.valid] % 2 == 0).float()
        return F.binary_cross_entropy_with_logits(logits, even)

    @classmethod
    def metrics(cls, cfg: ParityConfig, model, queries: Any, n_items: int, batch_size: int,
                seed: int) -> dict[str, float]:
        return {"parity_acc": 0.5}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("tasks_ds") / "prep")


@pytest.fixture
def parity(monkeypatch):
    monkeypatch.setitem(TASKS, "parity", TaskEntry(ParityConfig, ParityObjective))


def test_a_registered_task_trains_through_the_normal_path(ds, tmp_path, parity):
    from unirec_dist.checkpoint.dcp import read_manifest
    from unirec_dist.metrics.tasks import monitor_of, pointwise_metrics
    from unirec_dist.models.factory import load_retriever
    from unirec_dist.training.train import train

    cfg = _debug_cfg(ds, tmp_path / "run", "task.kind=parity", "task.parity.scale=2.0")
    assert isinstance(cfg.task.parity, ParityConfig) and cfg.task.parity.scale == 2.0
    ckpt = train(cfg)
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        losses = [float(r["train/loss_step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]
    assert losses and all(math.isfinite(x) for x in losses)
    mf = read_manifest(ckpt)
    assert mf["config"]["task"]["kind"] == "parity" and mf["config"]["task"]["parity"] == {"scale": 2.0}
    model, _ = load_retriever(ckpt, ds)         # rebuilt from the manifest's config, head included
    assert isinstance(model.heads["parity"], nn.Linear)
    assert monitor_of(cfg) == ("parity_acc", "max")
    assert pointwise_metrics(model, None, cfg, 30) == {"parity_acc": 0.5}


def test_a_registered_task_section_is_checked_strictly(ds, tmp_path, parity):
    with pytest.raises(ConfigError, match=r"task\.parity\.scal: unknown key \(did you mean 'task\.parity\.scale'\?\)"):
        _debug_cfg(ds, tmp_path, "task.kind=parity", "task.parity.scal=2")
    with pytest.raises(ConfigError, match=r"task\.parity\.scale: must be > 0"):
        _debug_cfg(ds, tmp_path, "task.kind=parity", "task.parity.scale=0")
    with pytest.raises(ConfigError, match=r"task\.kind: unknown task 'parit' \(did you mean 'parity'\?\); "
                                          r"registered: ctr, multi, parity, rating, retrieval"):
        _debug_cfg(ds, tmp_path, "task.kind=parit")


def test_without_registration_the_task_is_unknown(ds, tmp_path):
    with pytest.raises(ConfigError, match=r"task\.kind: unknown task 'parity'; registered: ctr, multi, rating, retrieval"):
        _debug_cfg(ds, tmp_path, "task.kind=parity")
