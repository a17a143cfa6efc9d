"""Rating regression head: rating of the next item from (state, item) features."""
from __future__ import annotations

import torch
from torch import nn

from unirec_dist.models.interaction.mlp import mlp


class RatingHead(nn.Module):
    """h (P, D) states, e (P, D) target item vectors -> (P,) predicted ratings."""

    def __init__(self, dim: int, hidden: list[int]) -> None:
        super().__init__()
        self.mlp = mlp(3 * dim, hidden, 1)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([h, e, h * e], dim=-1)).squeeze(-1)
