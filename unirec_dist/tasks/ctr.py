"""Click-through (CTR): a target-attention head scores (history, next item) against sampled
items with BCE; AUC/log-loss on each query's first target against sampled non-clicks.

YAML: `task: {kind: ctr, ctr: {num_negatives: 4, positions_per_seq: 4, label_min_rating: 4}}`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unirec_dist.errors import check
from unirec_dist.metrics.pointwise import auc, first_values, log_loss, pointwise_states
from unirec_dist.models.heads.ctr import CTRHead
from unirec_dist.models.seqrec import SeqRecModel
from unirec_dist.tasks.base import Objective, SeqForward, TaskConfig


@dataclass
class CTRConfig(TaskConfig):
    num_negatives: int = 4                      # sampled non-clicked items per positive
    positions_per_seq: int = 4                  # positions scored per sequence (most recent first)
    hidden: list[int] = field(default_factory=lambda: [64])
    label_min_rating: float | None = None       # positives are next items rated >= this (None: all)

    def validate(self) -> None:
        check(self.num_negatives >= 1, "task.ctr.num_negatives", f"must be >= 1, got {self.num_negatives}")
        check(self.positions_per_seq >= 1, "task.ctr.positions_per_seq",
              f"must be >= 1, got {self.positions_per_seq}")


class CTRObjective(Objective):
    """BCE of the CTR head: at the last `positions_per_seq` positions of each sequence, the next
    item is a click (label 1, or rating >= label_min_rating) and `num_negatives` uniform items are not."""

    reads_history = True
    monitor = ("AUC", "max")

    def __init__(self, cfg: CTRConfig, n_items: int) -> None:
        self.cfg, self.n_items = cfg, n_items

    @classmethod
    def from_config(cls, cfg: CTRConfig, n_items: int, item_counts: torch.Tensor | None) -> CTRObjective:
        return cls(cfg, n_items)

    @classmethod
    def build_head(cls, cfg: CTRConfig, dim: int) -> nn.Module:
        return CTRHead(dim, cfg.hidden)

    def __call__(self, model: SeqRecModel, f: SeqForward) -> torch.Tensor:
        B, L, _ = f.states.shape
        S = min(self.cfg.positions_per_seq, L)
        in_len = f.valid.sum(1).clamp(min=1)  # approximate: masked ids only shorten the tail
        # positions in_len - S .. in_len - 1 (clamped at 0), shape (B, S)
        pos = (in_len[:, None] - S + torch.arange(S, device=f.states.device)[None, :]).clamp(min=0)
        ok = f.valid.gather(1, pos)                            # (B, S)
        states = f.states.gather(1, pos[..., None].expand(-1, -1, f.states.shape[-1]))
        tgt = f.ids[:, 1:].gather(1, pos)                      # (B, S)
        C = 1 + self.cfg.num_negatives
        neg = torch.randint(1, self.n_items, (B, S, C - 1), device=tgt.device)
        cand_ids = torch.cat([tgt[..., None], neg], dim=-1)    # (B, S, C)
        cand = model.embedding.item_vectors(cand_ids.reshape(-1)).view(B, S, C, -1)
        hist = f.items[:, :-1]                                  # (B, L, D)
        visible = torch.arange(L, device=pos.device)[None, None, :] <= pos[..., None]
        logits = model.heads["ctr"](hist, visible, states, cand)
        labels = torch.zeros_like(logits)
        pos_label = torch.ones_like(tgt, dtype=logits.dtype)
        if self.cfg.label_min_rating is not None and f.ratings is not None:
            pos_label = (f.ratings[:, 1:].gather(1, pos) >= self.cfg.label_min_rating).to(logits.dtype)
        labels[..., 0] = pos_label
        w = ok[..., None].expand_as(logits).to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, labels, weight=w, reduction="sum")
        return loss / w.sum().clamp(min=1)

    @classmethod
    @torch.no_grad()
    def metrics(cls, cfg: CTRConfig, model: SeqRecModel, queries: Any, n_items: int, batch_size: int,
                seed: int) -> dict[str, float]:
        """AUC/log-loss of the CTR head: each query's first target (label 1, or rating >=
        label_min_rating) against `num_negatives` uniformly drawn items (label 0, fixed seed)."""
        g = torch.Generator().manual_seed(seed)
        thr = cfg.label_min_rating
        ratings = (first_values(queries["target_ratings"])
                   if (thr is not None and "target_ratings" in queries.column_names) else None)
        scores, labels = [], []
        start = 0
        for items, lengths, h, tgt in pointwise_states(model, queries, batch_size, model.max_len):
            B, L, _ = items.shape
            C = 1 + cfg.num_negatives
            neg = torch.randint(1, n_items + 1, (B, 1, C - 1), generator=g)
            cand_ids = torch.cat([tgt[:, None, None], neg], dim=-1)                         # (B, 1, C)
            cand = model.embedding.item_vectors(cand_ids.reshape(-1)).view(B, 1, C, -1)
            visible = (torch.arange(L)[None, None, :] < lengths[:, None, None])             # (B, 1, L)
            logits = model.heads["ctr"](items, visible, h[:, None, :], cand)[:, 0]          # (B, C)
            lab = torch.zeros(B, C)
            if ratings is not None:
                lab[:, 0] = torch.from_numpy((ratings[start:start + B] >= thr).astype(np.float32))
            else:
                lab[:, 0] = 1.0
            start += B
            scores.append(logits.reshape(-1).float().numpy())
            labels.append(lab.reshape(-1).numpy())
        s = np.concatenate(scores) if scores else np.zeros(0)
        y = np.concatenate(labels) if labels else np.zeros(0)
        return {"AUC": auc(s, y), "LogLoss": log_loss(1.0 / (1.0 + np.exp(-s)), y)}
