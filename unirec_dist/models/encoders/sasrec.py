"""SASRec-style causal self-attention encoder (Kang & McAuley 2018, as in generative-recommenders).

Input item embeddings are scaled by sqrt(D), learned absolute positions (0 = oldest kept item)
are added, then `num_blocks` pre-LN blocks of causal multi-head attention and a point-wise FFN.
Every position is encoded in one causal pass, so a sequence of length n trains n targets.
`last_states` (queries for evaluation and serving) runs the last block for the last position
of each row only: the earlier blocks still need every position (they are the keys and values),
the last block's attention and FFN do not.

YAML: `model.encoder: {kind: sasrec, num_blocks: 2, num_heads: 1, ffn_dim: 50, dropout: 0.2}`.
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
class SASRecConfig(EncoderConfig):
    kind: Literal["sasrec"] = "sasrec"
    num_blocks: int = 2
    num_heads: int = 1
    ffn_dim: int = 50                           # feed-forward width
    dropout: float = 0.2
    attn_dropout: float = 0.0

    def validate(self) -> None:
        check(self.num_blocks >= 0, "model.encoder.num_blocks", f"must be >= 0, got {self.num_blocks}")
        check(self.num_heads >= 1, "model.encoder.num_heads", f"must be >= 1, got {self.num_heads}")
        check(self.ffn_dim >= 1, "model.encoder.ffn_dim", f"must be >= 1, got {self.ffn_dim}")
        check_dropout(self, "dropout", "attn_dropout")

    def validate_for_model(self, dim: int) -> None:
        check(dim % self.num_heads == 0, "model.encoder.num_heads",
              f"must divide model.embedding.dim ({dim}), got {self.num_heads}")


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        # No key bias (the key third of qkv.bias stays 0 and is not applied): softmax ignores a
        # shift shared by all keys, so its exact gradient is 0, and Adam turned the float noise in
        # that gradient (whose sign follows the summation order, i.e. the sharding plan) into
        # lr-sized steps. Kept in the parameter so checkpoints keep their layout.
        with torch.no_grad():
            self.qkv.bias[dim:2 * dim].zero_()
        self.out = nn.Linear(dim, dim)
        self.attn_dropout = attn_dropout

    def forward(self, q_in: torch.Tensor, kv_in: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """q_in (B, Lq, D), kv_in (B, L, D) -> (B, Lq, D). Without `visible`, Lq = L and position i
        attends to positions <= i; else visible (B, Lq, L) bool says which keys each query sees."""
        B, Lq, D = q_in.shape
        L = kv_in.shape[1]
        H = self.num_heads
        w_q, w_kv = self.qkv.weight.split([D, 2 * D])
        b_q, b_k, b_v = self.qkv.bias.split([D, D, D])
        b_kv = torch.cat([torch.zeros_like(b_k), b_v])     # no key bias (see __init__)
        q = F.linear(q_in, w_q, b_q).view(B, Lq, H, D // H).transpose(1, 2)
        k, v = F.linear(kv_in, w_kv, b_kv).view(B, L, 2, H, D // H).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=None if visible is None else visible[:, None],
                                           is_causal=visible is None,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        return self.out(o.transpose(1, 2).reshape(B, Lq, D))


class PointWiseFFN(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.fc2(self.drop(F.relu(self.fc1(x)))))


class SASRecEncoder(SequenceEncoder):
    """(B, L, D) item embeddings + lengths (B,) -> (B, L, D) causal states (padding rows = 0)."""

    fixed_max_len = True    # learned absolute positions

    def __init__(self, dim: int, max_len: int, num_blocks: int = 2, num_heads: int = 1,
                 ffn_dim: int = 50, dropout: float = 0.2, attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.max_len = max_len
        self.pos = nn.Embedding(max_len, dim)
        nn.init.trunc_normal_(self.pos.weight, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.attn_norms = nn.ModuleList([nn.LayerNorm(dim, eps=1e-8) for _ in range(num_blocks)])
        self.attns = nn.ModuleList([CausalSelfAttention(dim, num_heads, attn_dropout) for _ in range(num_blocks)])
        self.ffn_norms = nn.ModuleList([nn.LayerNorm(dim, eps=1e-8) for _ in range(num_blocks)])
        self.ffns = nn.ModuleList([PointWiseFFN(dim, ffn_dim, dropout) for _ in range(num_blocks)])
        self.final_norm = nn.LayerNorm(dim, eps=1e-8)

    @classmethod
    def from_config(cls, cfg: SASRecConfig, dim: int, max_len: int) -> SASRecEncoder:
        return cls(dim, max_len, cfg.num_blocks, cfg.num_heads, cfg.ffn_dim, cfg.dropout, cfg.attn_dropout)

    def forward(self, items: torch.Tensor, lengths: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(items, lengths, last_only=False)

    def last_states(self, items: torch.Tensor, lengths: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        if not self.attns:     # no block to shorten
            return super().last_states(items, lengths, users)
        return self._run(items, lengths.clamp(min=1), last_only=True) * (lengths > 0).unsqueeze(-1).to(items.dtype)

    def _run(self, x: torch.Tensor, lengths: torch.Tensor, last_only: bool) -> torch.Tensor:
        """-> (B, L, D) states, or with last_only the (B, D) states at position lengths - 1."""
        B, L, D = x.shape
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {self.max_len}")
        mask = (torch.arange(L, device=x.device)[None, :] < lengths[:, None]).unsqueeze(-1).to(x.dtype)
        x = x * math.sqrt(D) + self.pos.weight[:L]
        x = self.drop(x) * mask
        n = len(self.attns)
        # Rows are right-padded and attention is causal, so no valid position ever reads a padded
        # one: padding is zeroed at the input and the output only, not between blocks.
        for i, (ln1, attn, ln2, ffn) in enumerate(zip(self.attn_norms, self.attns, self.ffn_norms, self.ffns)):
            if last_only and i == n - 1:
                last = (lengths - 1).clamp(min=0)
                q = ln1(x[torch.arange(B, device=x.device), last].unsqueeze(1))         # (B, 1, D)
                visible = torch.arange(L, device=x.device)[None, None, :] <= last[:, None, None]
                y = q + attn(q, x, visible)
                return self.final_norm(ffn(ln2(y))).squeeze(1) * (lengths > 0).unsqueeze(-1).to(x.dtype)
            q = ln1(x)
            x = q + attn(q, x)
            x = ffn(ln2(x))
        return self.final_norm(x) * mask
