"""Non-attention encoders: a causal mean-pool tower and plain MF (user id only).

YAML: `model.encoder: {kind: mean_pool, hidden: [128], dropout: 0.2}`; `model.encoder: {kind: mf}`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from unirec_dist.models.encoders.base import EncoderConfig, SequenceEncoder, check, check_dropout


@dataclass
class MeanPoolConfig(EncoderConfig):
    kind: Literal["mean_pool"] = "mean_pool"
    hidden: list[int] = field(default_factory=lambda: [128])   # tower MLP widths
    dropout: float = 0.2

    def validate(self) -> None:
        check(all(h >= 1 for h in self.hidden), "model.encoder.hidden", f"widths must be >= 1, got {self.hidden}")
        check_dropout(self, "dropout")


class MeanPoolEncoder(SequenceEncoder):
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

    @classmethod
    def from_config(cls, cfg: MeanPoolConfig, dim: int, max_len: int) -> MeanPoolEncoder:
        return cls(dim, cfg.hidden, cfg.dropout)

    def forward(self, items: torch.Tensor, lengths: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        B, L, D = items.shape
        mask = (torch.arange(L, device=items.device)[None, :] < lengths[:, None]).unsqueeze(-1).to(items.dtype)
        counts = torch.arange(1, L + 1, device=items.device, dtype=items.dtype).view(1, L, 1)
        mean = torch.cumsum(items * mask, dim=1) / counts
        return self.mlp(mean) * mask


@dataclass
class MFConfig(EncoderConfig):
    kind: Literal["mf"] = "mf"


class MFEncoder(SequenceEncoder):
    """Matrix factorisation: the state at every position is the user's id vector (history unused).

    forward(items (B, L, D), lengths (B,), users (B, D)) -> (B, L, D); last_states -> users (B, D),
    also for an empty history (a known user needs none).
    """

    needs_user_vectors = True
    reads_history = False

    @classmethod
    def from_config(cls, cfg: MFConfig, dim: int, max_len: int) -> MFEncoder:
        return cls()

    def forward(self, items: torch.Tensor, lengths: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        assert users is not None, "MFEncoder.needs_user_vectors"
        L = items.shape[1]
        mask = (torch.arange(L, device=users.device)[None, :] < lengths[:, None]).unsqueeze(-1)
        return users[:, None, :].expand(-1, L, -1) * mask.to(users.dtype)

    def last_states(self, items: torch.Tensor, lengths: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        assert users is not None, "MFEncoder.needs_user_vectors"
        return users
