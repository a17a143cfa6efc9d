"""Rating regression: an MLP head over (state, next item) trained with MSE on every position
whose next item has a rating; RMSE/MAE on each query's first target.

YAML: `task: {kind: rating, rating: {hidden: [64]}}` (the dataset needs a rating column).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unirec_dist.errors import check
from unirec_dist.metrics.pointwise import first_values, mae, pointwise_states, rmse
from unirec_dist.models.heads.rating import RatingHead
from unirec_dist.models.seqrec import SeqRecModel
from unirec_dist.tasks.base import Objective, SeqForward, TaskConfig


@dataclass
class RatingConfig(TaskConfig):
    hidden: list[int] = field(default_factory=lambda: [64])

    def validate(self) -> None:
        check(all(h >= 1 for h in self.hidden), "task.rating.hidden", f"widths must be >= 1, got {self.hidden}")


class RatingObjective(Objective):
    """MSE of the rating head on every position whose next item has a rating."""

    needs_ratings = True
    monitor = ("RMSE", "min")

    @classmethod
    def from_config(cls, cfg: RatingConfig, n_items: int, item_counts: torch.Tensor | None) -> RatingObjective:
        return cls()

    @classmethod
    def build_head(cls, cfg: RatingConfig, dim: int) -> nn.Module:
        return RatingHead(dim, cfg.hidden)

    def __call__(self, model: SeqRecModel, f: SeqForward) -> torch.Tensor:
        if f.ratings is None:
            raise ValueError("rating task needs batch.extra['ratings'] (train.parquet has no ratings column)")
        h = f.states[f.valid]
        e = f.items[:, 1:][f.valid]
        return F.mse_loss(model.heads["rating"](h, e), f.ratings[:, 1:][f.valid])

    @classmethod
    @torch.no_grad()
    def metrics(cls, cfg: RatingConfig, model: SeqRecModel, queries: Any, n_items: int, batch_size: int,
                seed: int) -> dict[str, float]:
        """RMSE/MAE of the rating head on each query's first target (queries with a target rating)."""
        if "target_ratings" not in queries.column_names:
            return {}
        y = first_values(queries["target_ratings"])
        preds = []
        for _, _, h, tgt in pointwise_states(model, queries, batch_size, model.max_len):
            preds.append(model.heads["rating"](h, model.embedding.item_vectors(tgt)).float().numpy())
        p = np.concatenate(preds) if preds else np.zeros(0)
        ok = ~np.isnan(y)
        return {"RMSE": rmse(p[ok], y[ok]), "MAE": mae(p[ok], y[ok]), "rated": int(ok.sum())}
