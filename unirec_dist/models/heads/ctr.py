"""Binary CTR head: target attention over the visible history + MLP over (state, pooled, item)."""
from __future__ import annotations

import torch
from torch import nn

from unirec_dist.models.interaction.mlp import mlp
from unirec_dist.models.interaction.target_attention import TargetAttention


class CTRHead(nn.Module):
    """history (B, L, D), valid (B, S, L), states (B, S, D), candidates (B, S, C, D) -> logits (B, S, C)."""

    def __init__(self, dim: int, hidden: list[int]) -> None:
        super().__init__()
        self.attn = TargetAttention(dim)
        self.mlp = mlp(4 * dim, hidden, 1)

    def forward(self, history: torch.Tensor, valid: torch.Tensor, states: torch.Tensor,
                candidates: torch.Tensor) -> torch.Tensor:
        pooled = self.attn(history, valid, candidates)                          # (B, S, C, D)
        h = states[:, :, None, :].expand_as(candidates)
        return self.mlp(torch.cat([h, pooled, candidates, pooled * candidates], dim=-1)).squeeze(-1)
