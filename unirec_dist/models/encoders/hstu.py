"""HSTU-style encoder (Zhai et al. 2024, "Actions Speak Louder than Words"): pointwise
(SiLU, not softmax) causal attention with a learned relative bias and gating.

Block:  u, v, q, k = split(SiLU(W1 LN(x)));  A = SiLU(q k^T + rab) / max_len  (causal)
        x <- x + W2 dropout(LN(A v) * u)
The attention scale divides by the fixed max_len (not the batch's padded length) so that
length-grouped batches and evaluation see the same normalisation. `last_states` runs the last
block for each row's last position only (queries for evaluation and serving).

Relative bias `rab` (per block, shared by the heads): a learned weight per position gap i - j,
plus with `time_bias` a learned weight per bucket of the time gap between query i and key j,
as in generative-recommenders' RelativeBucketedTimeAndPositionBasedBias: the query's time is
the time of the event that follows position i (the predicted one: in training the next item's
timestamp, in evaluation the target's, in serving the request's), bucket =
min(floor(ln(max(|gap|, 1)) / 0.301), time_buckets). `time_bias: false` builds exactly the
position-only model (same parameters, same initialisation).

Memory linear in L: the attention runs over blocks of `attn_block` queries against the keys
their causal window reaches, bias computed per block, so no (B, H, L, L) tensor exists. In
training each query block is recomputed in backward (activation checkpointing) instead of
keeping its (B, H, block, L) scores, so peak memory grows with L, not L^2. With L <=
attn_block there is one block and no recomputation (the ML-1M recipe's L = 200 runs as before).
(Hand-written: torch's fused attention kernels are softmax attention and take no per-pair bias
table lookups on CPU; HSTU's pointwise SiLU attention has no library kernel on CPU.)

YAML: `model.encoder: {kind: hstu, num_blocks: 2, num_heads: 1, dqk: 50, dv: 50, dropout: 0.2,
time_bias: false, time_buckets: 128, attn_block: 256}`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from unirec_dist.models.encoders.base import EncoderConfig, SequenceEncoder, check, check_dropout

TIME_BUCKET_SCALE = 0.301   # generative-recommenders' ML-1M bucketisation: ln(gap) / 0.301


@dataclass
class HSTUConfig(EncoderConfig):
    kind: Literal["hstu"] = "hstu"
    num_blocks: int = 2
    num_heads: int = 1
    dqk: int = 25                               # per-head query/key dim
    dv: int = 25                                # per-head value dim
    dropout: float = 0.2
    attn_dropout: float = 0.0
    time_bias: bool = False                     # bucketed time-gap bias beside the position bias
    time_buckets: int = 128                     # buckets of ln(gap seconds) / 0.301 (the last: longer)
    attn_block: int = 256                       # queries per attention block (memory ~ block x L)

    def validate(self) -> None:
        check(self.num_blocks >= 0, "model.encoder.num_blocks", f"must be >= 0, got {self.num_blocks}")
        check(self.num_heads >= 1, "model.encoder.num_heads", f"must be >= 1, got {self.num_heads}")
        for k in ("dqk", "dv", "time_buckets", "attn_block"):
            v = getattr(self, k)
            check(v >= 1, f"model.encoder.{k}", f"must be >= 1, got {v}")
        check_dropout(self, "dropout", "attn_dropout")

    @property
    def uses_times(self) -> bool:
        return self.time_bias


def time_buckets(gap: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Time gaps (any shape, int64 seconds) -> bucket indices in [0, num_buckets], long."""
    g = gap.abs().clamp(min=1).to(torch.float64)
    return (torch.log(g) / TIME_BUCKET_SCALE).long().clamp(0, num_buckets)


def hstu_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, qpos: torch.Tensor,
                   bias, scale: float, block: int, dropout: nn.Module | None = None,
                   recompute: bool = False) -> torch.Tensor:
    """Causal pointwise attention, blocked over queries.

    q (B, H, Lq, dqk), k (B, H, L, dqk), v (B, H, L, dv); qpos (B, Lq) long: the sequence
    position of each query (a query at position p sees keys 0..p); bias(rows, qpos (B, Lq'),
    kpos (L',)) -> (B, Lq', L') the additive bias of those pairs. -> (B, H, Lq, dv) =
    sum_j SiLU(q_i k_j + bias_ij) * [j <= p_i] * scale * v_j.
    Memory per block: (B, H, block, keys reached) scores; with `recompute` (training) each
    block's scores are rebuilt in backward instead of kept."""
    Lq = q.shape[2]
    if Lq <= block:
        return _attend(q, k, v, qpos, bias, scale, dropout)
    outs = []
    for a in range(0, Lq, block):
        qp = qpos[:, a:a + block]
        reach = int(qp.max()) + 1           # keys beyond the block's last position are masked anyway
        args = (q[:, :, a:a + block], k[:, :, :reach], v[:, :, :reach], qp)
        if recompute:
            outs.append(checkpoint(_attend, *args, bias, scale, dropout, use_reentrant=False))
        else:
            outs.append(_attend(*args, bias, scale, dropout))
    return torch.cat(outs, dim=2)


def _attend(q, k, v, qpos, bias, scale, dropout):
    kpos = torch.arange(k.shape[2], device=q.device)
    visible = kpos[None, None, :] <= qpos[:, :, None]                       # (B, Lq, L)
    scores = q @ k.transpose(-1, -2) + bias(qpos, kpos)[:, None]            # (B, H, Lq, L)
    attn = F.silu(scores) * (visible[:, None].to(scores.dtype) * scale)
    if dropout is not None:
        attn = dropout(attn)
    return attn @ v


class HSTUBlock(nn.Module):
    def __init__(self, dim: int, max_len: int, num_heads: int, dqk: int, dv: int,
                 dropout: float, attn_dropout: float, time_buckets: int | None = None,
                 attn_block: int = 256) -> None:
        super().__init__()
        self.h, self.dqk, self.dv, self.max_len = num_heads, dqk, dv, max_len
        self.attn_block = attn_block
        self.norm_in = nn.LayerNorm(dim, eps=1e-6)
        self.uvqk = nn.Linear(dim, num_heads * (2 * dv + 2 * dqk))
        nn.init.xavier_uniform_(self.uvqk.weight)
        nn.init.zeros_(self.uvqk.bias)
        self.norm_attn = nn.LayerNorm(num_heads * dv, eps=1e-6)
        self.out = nn.Linear(num_heads * dv, dim)
        # relative position bias: index (i - j) in [0, max_len) for causal pairs
        self.rel_pos = nn.Parameter(torch.zeros(max_len))
        self.time_buckets = time_buckets
        if time_buckets is not None:
            # relative time bias: one weight per bucket 0..time_buckets (generative-recommenders' init)
            self.rel_time = nn.Parameter(torch.empty(time_buckets + 1).normal_(mean=0.0, std=0.02))
        self.drop = nn.Dropout(dropout)
        self.attn_drop = nn.Dropout(attn_dropout) if attn_dropout > 0 else None

    def forward(self, x: torch.Tensor, times: torch.Tensor | None = None,
                last: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, D); times (B, L + 1) int64 (position t's event time, then at t + 1 the time of
        what follows it) or None -> (B, Lq, D). Lq = L, or with `last` (B,) only the row of
        position last[b] (Lq = 1)."""
        B, L, _ = x.shape
        H = self.h
        u, v, q, k = F.silu(self.uvqk(self.norm_in(x))).split(
            [H * self.dv, H * self.dv, H * self.dqk, H * self.dqk], dim=-1)
        if last is not None:
            rows = torch.arange(B, device=x.device)
            x, u, q = x[rows, last].unsqueeze(1), u[rows, last].unsqueeze(1), q[rows, last].unsqueeze(1)
            qpos = last[:, None]
        else:
            qpos = torch.arange(L, device=x.device)[None, :].expand(B, L)
        Lq = q.shape[1]
        q = q.view(B, Lq, H, self.dqk).transpose(1, 2)
        k = k.view(B, L, H, self.dqk).transpose(1, 2)
        v = v.view(B, L, H, self.dv).transpose(1, 2)

        def bias(qp: torch.Tensor, kp: torch.Tensor) -> torch.Tensor:
            """qp (B, Lq') query positions, kp (L',) key positions -> (B, Lq', L') bias."""
            b = self.rel_pos[(qp[:, :, None] - kp[None, None, :]).clamp(0, self.max_len - 1)]
            if self.time_buckets is not None:
                assert times is not None   # checked where the encoder is called with time_bias on
                gap = times.gather(1, qp + 1)[:, :, None] - times[:, kp][:, None, :]
                b = b + self.rel_time[time_buckets(gap, self.time_buckets)]
            return b

        recompute = self.training and torch.is_grad_enabled()
        av = hstu_attention(q, k, v, qpos, bias, 1.0 / self.max_len, self.attn_block,
                            self.attn_drop if self.training else None, recompute)
        av = av.transpose(1, 2).reshape(B, Lq, H * self.dv)
        return x + self.out(self.drop(self.norm_attn(av) * u))


class HSTUEncoder(SequenceEncoder):
    """(B, L, D) item embeddings + lengths (B,) [+ times (B, L + 1)] -> (B, L, D) causal states
    (padding rows = 0)."""

    fixed_max_len = True    # learned positions, relative bias and attention scale sized by max_len

    def __init__(self, dim: int, max_len: int, num_blocks: int = 8, num_heads: int = 2,
                 dqk: int = 25, dv: int = 25, dropout: float = 0.2, attn_dropout: float = 0.0,
                 time_bias: bool = False, time_buckets: int = 128, attn_block: int = 256) -> None:
        super().__init__()
        self.dim, self.max_len = dim, max_len
        self.uses_times = time_bias and num_blocks > 0
        self.pos = nn.Embedding(max_len, dim)
        nn.init.trunc_normal_(self.pos.weight, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([
            HSTUBlock(dim, max_len, num_heads, dqk, dv, dropout, attn_dropout,
                      time_buckets if time_bias else None, attn_block) for _ in range(num_blocks)
        ])
        self.final_norm = nn.LayerNorm(dim, eps=1e-6)

    @classmethod
    def from_config(cls, cfg: HSTUConfig, dim: int, max_len: int) -> HSTUEncoder:
        return cls(dim, max_len, cfg.num_blocks, cfg.num_heads, cfg.dqk, cfg.dv, cfg.dropout, cfg.attn_dropout,
                   cfg.time_bias, cfg.time_buckets, cfg.attn_block)

    def forward(self, items: torch.Tensor, lengths: torch.Tensor, users: torch.Tensor | None = None,
                times: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(items, lengths, times, last_only=False)

    def last_states(self, items: torch.Tensor, lengths: torch.Tensor, users: torch.Tensor | None = None,
                    times: torch.Tensor | None = None) -> torch.Tensor:
        if not self.blocks:     # no block to shorten
            return super().last_states(items, lengths, users)
        return self._run(items, lengths.clamp(min=1), times, last_only=True) * (lengths > 0).unsqueeze(-1).to(items.dtype)

    def _run(self, x: torch.Tensor, lengths: torch.Tensor, times: torch.Tensor | None,
             last_only: bool) -> torch.Tensor:
        """-> (B, L, D) states, or with last_only the (B, D) states at position lengths - 1."""
        B, L, D = x.shape
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {self.max_len}")
        if self.uses_times:
            if times is None or times.shape != (B, L + 1):
                raise ValueError(f"time_bias needs times (B, L + 1) = {(B, L + 1)}, got "
                                 f"{None if times is None else tuple(times.shape)}")
        else:
            times = None
        mask = (torch.arange(L, device=x.device)[None, :] < lengths[:, None]).unsqueeze(-1).to(x.dtype)
        x = self.drop(x * math.sqrt(D) + self.pos.weight[:L]) * mask
        n = len(self.blocks)
        for i, blk in enumerate(self.blocks):
            if last_only and i == n - 1:
                y = blk(x, times, last=(lengths - 1).clamp(min=0))
                return self.final_norm(y).squeeze(1) * (lengths > 0).unsqueeze(-1).to(x.dtype)
            x = blk(x, times) * mask
        return self.final_norm(x) * mask
