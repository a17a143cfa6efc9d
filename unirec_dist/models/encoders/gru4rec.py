"""GRU4Rec (Hidasi et al. 2016, "Session-based Recommendations with Recurrent Neural Networks"),
in the form RecBole trains it: dropout on the item embeddings, a GRU over the sequence, a linear
map from the GRU's hidden size back to the embedding dim. The state after item t is the query for
item t + 1; the final hidden state (position lengths - 1) is the user's query.

Rows are right-padded, so a valid position never reads a padded one (the GRU runs left to
right): no packing is needed, padded outputs are zeroed. The default `last_states` (run every
position, keep the last) is the query path: a recurrence has no cheaper way to the last state.

YAML: `model.encoder: {kind: gru4rec, hidden_size: 128, num_layers: 1, dropout: 0.3}`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from unirec_dist.models.encoders.base import EncoderConfig, SequenceEncoder, check, check_dropout


@dataclass
class GRU4RecConfig(EncoderConfig):
    kind: Literal["gru4rec"] = "gru4rec"
    hidden_size: int = 128                      # GRU state width (RecBole's default)
    num_layers: int = 1
    dropout: float = 0.3                        # on the input item embeddings

    def validate(self) -> None:
        check(self.hidden_size >= 1, "model.encoder.hidden_size", f"must be >= 1, got {self.hidden_size}")
        check(self.num_layers >= 1, "model.encoder.num_layers", f"must be >= 1, got {self.num_layers}")
        check_dropout(self, "dropout")


class GRU4RecEncoder(SequenceEncoder):
    """(B, L, D) item embeddings + lengths (B,) -> (B, L, D) GRU states (padding rows = 0)."""

    def __init__(self, dim: int, hidden_size: int = 128, num_layers: int = 1, dropout: float = 0.3) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, hidden_size, num_layers, batch_first=True, bias=False)
        # RecBole's init for the recurrent weights (torch's default is uniform(+-1/sqrt(hidden)))
        for p in self.gru.parameters():
            nn.init.xavier_uniform_(p)
        self.out = nn.Linear(hidden_size, dim)

    @classmethod
    def from_config(cls, cfg: GRU4RecConfig, dim: int, max_len: int) -> GRU4RecEncoder:
        return cls(dim, cfg.hidden_size, cfg.num_layers, cfg.dropout)

    def forward(self, items: torch.Tensor, lengths: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        L = items.shape[1]
        mask = (torch.arange(L, device=items.device)[None, :] < lengths[:, None]).unsqueeze(-1).to(items.dtype)
        h, _ = self.gru(self.drop(items))                                    # (B, L, hidden)
        return self.out(h) * mask
