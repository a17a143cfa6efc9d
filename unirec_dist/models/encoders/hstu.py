"""HSTU-style encoder (Zhai et al. 2024, "Actions Speak Louder than Words"): pointwise
(SiLU, not softmax) causal attention with a learned relative-position bias and gating.

Block:  u, v, q, k = split(SiLU(W1 LN(x)));  A = SiLU(q k^T + rab) / max_len  (causal)
        x <- x + W2 dropout(LN(A v) * u)
The attention scale divides by the fixed max_len (not the batch's padded length) so that
length-grouped batches and evaluation see the same normalisation. `last_states` runs the last
block for each row's last position only (queries for evaluation and serving).

YAML: `model.encoder: {kind: hstu, num_blocks: 2, num_heads: 1, dqk: 50, dv: 50, dropout: 0.2}`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from unirec_dist.models.encoders.base import EncoderConfig, SequenceEncoder, check, check_dropout


@dataclass
class HSTUConfig(EncoderConfig):
    kind: Literal["hstu"] = "hstu"
    num_blocks: int = 2
    num_heads: int = 1
    dqk: int = 25                               # per-head query/key dim
    dv: int = 25                                # per-head value dim
    dropout: float = 0.2
    attn_dropout: float = 0.0

    def validate(self) -> None:
        check(self.num_blocks >= 0, "model.encoder.num_blocks", f"must be >= 0, got {self.num_blocks}")
        check(self.num_heads >= 1, "model.encoder.num_heads", f"must be >= 1, got {self.num_heads}")
        for k in ("dqk", "dv"):
            v = getattr(self, k)
            check(v >= 1, f"model.encoder.{k}", f"must be >= 1, got {v}")
        check_dropout(self, "dropout", "attn_dropout")


class HSTUBlock(nn.Module):
    def __init__(self, dim: int, max_len: int, num_heads: int, dqk: int, dv: int,
                 dropout: float, attn_dropout: float) -> None:
        super().__init__()
        self.h, self.dqk, self.dv, self.max_len = num_heads, dqk, dv, max_len
        self.norm_in = nn.LayerNorm(dim, eps=1e-6)
        self.uvqk = nn.Linear(dim, num_heads * (2 * dv + 2 * dqk))
        nn.init.xavier_uniform_(self.uvqk.weight)
        nn.init.zeros_(self.uvqk.bias)
        self.norm_attn = nn.LayerNorm(num_heads * dv, eps=1e-6)
        self.out = nn.Linear(num_heads * dv, dim)
        # relative position bias: index (i - j) in [0, max_len) for causal pairs
        self.rel_pos = nn.Parameter(torch.zeros(max_len))
        self.drop = nn.Dropout(dropout)
        self.attn_drop = nn.Dropout(attn_dropout)

    def forward(self, x: torch.Tensor, causal: torch.Tensor, rel_idx: torch.Tensor,
                last: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, D); causal (Lq, L) or (B, Lq, L) bool; rel_idx of the same shape, long -> (B, Lq, D).
        Lq = L, or with `last` (B,) only the row of position last[b] (Lq = 1)."""
        B, L, _ = x.shape
        H = self.h
        u, v, q, k = F.silu(self.uvqk(self.norm_in(x))).split(
            [H * self.dv, H * self.dv, H * self.dqk, H * self.dqk], dim=-1)
        if last is not None:
            rows = torch.arange(B, device=x.device)
            x, u, q = x[rows, last].unsqueeze(1), u[rows, last].unsqueeze(1), q[rows, last].unsqueeze(1)
        Lq = q.shape[1]
        q = q.view(B, Lq, H, self.dqk).transpose(1, 2)
        k = k.view(B, L, H, self.dqk).transpose(1, 2)
        v = v.view(B, L, H, self.dv).transpose(1, 2)
        if causal.dim() == 3:   # per-row masks: (B, Lq, L) -> (B, 1, Lq, L)
            causal, rel_idx = causal[:, None], rel_idx[:, None]
        scores = q @ k.transpose(-1, -2) + self.rel_pos[rel_idx]            # (B, H, Lq, L)
        attn = F.silu(scores) * (causal.to(scores.dtype) / self.max_len)
        attn = self.attn_drop(attn)
        av = (attn @ v).transpose(1, 2).reshape(B, Lq, H * self.dv)
        return x + self.out(self.drop(self.norm_attn(av) * u))


class HSTUEncoder(SequenceEncoder):
    """(B, L, D) item embeddings + lengths (B,) -> (B, L, D) causal states (padding rows = 0)."""

    fixed_max_len = True    # learned positions, relative bias and attention scale sized by max_len

    def __init__(self, dim: int, max_len: int, num_blocks: int = 8, num_heads: int = 2,
                 dqk: int = 25, dv: int = 25, dropout: float = 0.2, attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.dim, self.max_len = dim, max_len
        self.pos = nn.Embedding(max_len, dim)
        nn.init.trunc_normal_(self.pos.weight, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([
            HSTUBlock(dim, max_len, num_heads, dqk, dv, dropout, attn_dropout) for _ in range(num_blocks)
        ])
        self.final_norm = nn.LayerNorm(dim, eps=1e-6)

    @classmethod
    def from_config(cls, cfg: HSTUConfig, dim: int, max_len: int) -> HSTUEncoder:
        return cls(dim, max_len, cfg.num_blocks, cfg.num_heads, cfg.dqk, cfg.dv, cfg.dropout, cfg.attn_dropout)

    def forward(self, items: torch.Tensor, lengths: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(items, lengths, last_only=False)

    def last_states(self, items: torch.Tensor, lengths: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        if not self.blocks:     # no block to shorten
            return super().last_states(items, lengths, users)
        return self._run(items, lengths.clamp(min=1), last_only=True) * (lengths > 0).unsqueeze(-1).to(items.dtype)

    def _run(self, x: torch.Tensor, lengths: torch.Tensor, last_only: bool) -> torch.Tensor:
        """-> (B, L, D) states, or with last_only the (B, D) states at position lengths - 1."""
        B, L, D = x.shape
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {self.max_len}")
        mask = (torch.arange(L, device=x.device)[None, :] < lengths[:, None]).unsqueeze(-1).to(x.dtype)
        x = self.drop(x * math.sqrt(D) + self.pos.weight[:L]) * mask
        ar = torch.arange(L, device=x.device)
        rel = ar[:, None] - ar[None, :]
        causal = rel >= 0
        rel_idx = rel.clamp(min=0)
        n = len(self.blocks)
        for i, blk in enumerate(self.blocks):
            if last_only and i == n - 1:
                last = (lengths - 1).clamp(min=0)
                rel = last[:, None, None] - ar[None, None, :]                      # (B, 1, L)
                y = blk(x, rel >= 0, rel.clamp(min=0), last=last)
                return self.final_norm(y).squeeze(1) * (lengths > 0).unsqueeze(-1).to(x.dtype)
            x = blk(x, causal, rel_idx) * mask
        return self.final_norm(x) * mask
