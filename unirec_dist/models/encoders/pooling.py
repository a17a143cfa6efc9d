"""Non-attention encoders: a causal mean-pool tower and plain MF (user id only)."""
from __future__ import annotations

import torch
from torch import nn


class MeanPoolEncoder(nn.Module):
    """State at position t = MLP(mean of item embeddings 0..t): (B, L, D) -> (B, L, D)."""

    def __init__(self, dim: int, hidden: list[int], dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(dropout)]
            d = h
        layers.append(nn.Linear(d, dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        mask = (torch.arange(L, device=x.device)[None, :] < lengths[:, None]).unsqueeze(-1).to(x.dtype)
        counts = torch.arange(1, L + 1, device=x.device, dtype=x.dtype).view(1, L, 1)
        mean = torch.cumsum(x * mask, dim=1) / counts
        return self.mlp(mean) * mask


class MFEncoder(nn.Module):
    """Matrix factorisation: the state at every position is the user's vector (history unused).

    forward(user_vecs (B, D), lengths (B,), L) -> (B, L, D)
    """

    def forward(self, user_vecs: torch.Tensor, lengths: torch.Tensor, L: int) -> torch.Tensor:
        mask = (torch.arange(L, device=user_vecs.device)[None, :] < lengths[:, None]).unsqueeze(-1)
        return user_vecs[:, None, :].expand(-1, L, -1) * mask.to(user_vecs.dtype)
