"""Target attention (DIN-style): pool a history with weights given by similarity to a candidate."""
from __future__ import annotations

import math

import torch
from torch import nn


class TargetAttention(nn.Module):
    """history (B, L, D), valid (B, S, L) bool, candidates (B, S, C, D) -> pooled (B, S, C, D).

    For every (sequence, scored position, candidate), a softmax over the history items the
    position may see (valid), with logits = <W h_j, c> / sqrt(D).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.key = nn.Linear(dim, dim, bias=False)

    def forward(self, history: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        k = self.key(history)                                            # (B, L, D)
        logits = torch.einsum("bscd,bld->bscl", candidates, k) / math.sqrt(history.shape[-1])
        logits = logits.masked_fill(~valid[:, :, None, :], float("-inf"))
        w = torch.softmax(logits, dim=-1).nan_to_num(0.0)
        return torch.einsum("bscl,bld->bscd", w, history)
