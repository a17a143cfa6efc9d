"""Training objectives over (model, SeqBatch): next-item retrieval, rating regression, CTR,
their weighted sum, and the optional contrastive term. No Lightning here.

A training SeqBatch holds each user's last max_len + 1 items in `seq` (key "item"); position t
of the encoder reads items 0..t and predicts item t + 1, so one causal pass trains every
position. `batch.extra["ratings"]` (T,) float, aligned with seq values, feeds the rating task;
`batch.extra["timestamps"]` (T,) int64, aligned likewise, feeds an encoder with a time bias.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from unirec_dist.embeddings.features import FeatureSpec
from unirec_dist.models.seqrec import SeqRecModel, pad_jagged
from unirec_dist.tasks.augment import augment


@dataclass
class SeqForward:
    """Shared forward of one training batch.

    states  (B, L, D) encoder states at input positions (un-normalised)
    items   (B, L + 1, D) raw item vectors of the whole sequence
    ids     (B, L + 1) item ids, 0 = padding/masked
    valid   (B, L) bool: position t has a real next item ids[:, t + 1]
    ratings (B, L + 1) float or None
    """

    states: torch.Tensor
    items: torch.Tensor
    ids: torch.Tensor
    valid: torch.Tensor
    ratings: torch.Tensor | None


def forward_sequences(model: SeqRecModel, batch, values: torch.Tensor | None = None,
                      lengths: torch.Tensor | None = None) -> SeqForward:
    jt = batch.seq["item"]
    if values is None:
        values, lengths = jt.values().long(), jt.lengths().long()
    assert lengths is not None, "values without lengths"
    # pad_width: the ranks' common width (training/strategy.common_pad_width), when distributed
    width = max(int(lengths.max()), 2, int(batch.extra.get("pad_width", 0)))
    ids = pad_jagged(values, lengths, width)                   # (B, L+1)
    # look up the padded id grid (pads hit row 0 and are masked downstream): cheaper on CPU than
    # scattering jagged vectors into a padded tensor and back in backward
    items = model.embedding.item_vectors(ids.reshape(-1)).view(ids.shape[0], width, -1)   # (B, L+1, D)
    in_len = (lengths - 1).clamp(min=0)
    times = None
    if model.encoder.uses_times:
        # (B, L + 1): input position t's time, and at t + 1 its target's (the query time)
        times = pad_jagged(batch.extra["timestamps"].long(), lengths, width)
    states = model.encode(items[:, :-1], in_len, batch.users, times)
    L = width - 1
    valid = (torch.arange(L, device=ids.device)[None, :] < in_len[:, None]) & (ids[:, 1:] > 0)
    ratings = None
    if "ratings" in batch.extra and batch.extra["ratings"] is not None and batch.extra["ratings"].numel() == values.numel():
        ratings = pad_jagged(batch.extra["ratings"].float(), lengths, width)
    return SeqForward(states, items, ids, valid, ratings)


class RetrievalObjective:
    """Sampled softmax (uniform per-position + in-batch negatives, logQ) or full softmax."""

    def __init__(self, cfg, n_items: int, item_counts: torch.Tensor | None = None) -> None:
        self.cfg = cfg
        self.log_pop = None
        if cfg.in_batch_negatives > 0 and item_counts is not None:
            c = item_counts.double().clamp(min=1)
            self.log_pop = (c / c.sum()).log().float()

    def __call__(self, model: SeqRecModel, f: SeqForward) -> torch.Tensor:
        from unirec_dist.models.heads.retrieval import full_softmax_loss, sampled_softmax_loss

        q = model.norm(f.states[f.valid])                      # (P, D)
        pos = f.ids[:, 1:][f.valid]                            # (P,)
        all_items = model.norm(model.embedding.all_item_vectors())
        if self.cfg.loss == "full_softmax":
            return full_softmax_loss(q, pos, all_items, self.cfg.temperature)
        lp = None if self.log_pop is None else self.log_pop.to(q.device)
        return sampled_softmax_loss(q, pos, all_items, self.cfg.temperature, self.cfg.num_negatives,
                                    self.cfg.in_batch_negatives, lp, group=self.cfg.negatives_group)


class RatingObjective:
    """MSE of the rating head on every position whose next item has a rating."""

    def __call__(self, model: SeqRecModel, f: SeqForward) -> torch.Tensor:
        if f.ratings is None:
            raise ValueError("rating task needs batch.extra['ratings'] (train.parquet has no ratings column)")
        h = f.states[f.valid]
        e = f.items[:, 1:][f.valid]
        return F.mse_loss(model.heads["rating"](h, e), f.ratings[:, 1:][f.valid])


class CTRObjective:
    """BCE of the CTR head: at the last `positions_per_seq` positions of each sequence, the next
    item is a click (label 1, or rating >= label_min_rating) and `num_negatives` uniform items are not."""

    def __init__(self, cfg, n_items: int) -> None:
        self.cfg, self.n_items = cfg, n_items

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


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Two views a, b (B, D) (normalised) -> NT-Xent loss over 2B samples."""
    B = a.shape[0]
    z = torch.cat([a, b], dim=0)
    sim = (z @ z.T) / temperature
    sim.fill_diagonal_(-1e4)
    target = torch.cat([torch.arange(B, 2 * B), torch.arange(0, B)]).to(a.device)
    return F.cross_entropy(sim, target)


class SequenceTask:
    """The configured objective: weighted sum of the active tasks (+ contrastive term).

    loss(model, batch) -> (scalar loss, {name: detached component})
    """

    def __init__(self, task_cfg, n_items: int, item_counts: torch.Tensor | None = None) -> None:
        self.cfg = task_cfg
        self.weights = task_cfg.active_tasks
        self.objectives: dict[str, Any] = {}
        builders = {
            "retrieval": lambda: RetrievalObjective(task_cfg.retrieval, n_items, item_counts),
            "rating": lambda: RatingObjective(),
            "ctr": lambda: CTRObjective(task_cfg.ctr, n_items),
        }
        for name in self.weights:
            self.objectives[name] = builders[name]()

    def loss(self, model: SeqRecModel, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        aug = self.cfg.augment
        jt = batch.seq["item"]
        values, lengths = jt.values().long(), jt.lengths().long()
        if aug.active and aug.contrastive_weight == 0 and model.training:
            values, lengths = augment(values, lengths, aug)
            if "ratings" in batch.extra:
                batch.extra = {k: v for k, v in batch.extra.items() if k != "ratings"}
        f = forward_sequences(model, batch, values, lengths)
        total = None
        parts: dict[str, torch.Tensor] = {}
        for name, w in self.weights.items():
            if w == 0:
                continue
            part = self.objectives[name](model, f)
            parts[name] = part.detach()
            total = w * part if total is None else total + w * part
        if aug.contrastive_weight > 0 and model.training:
            views = []
            for _ in range(2):
                v, n = augment(values, lengths, aug)
                width = max(int(n.max()), 1)
                x = pad_jagged(model.embedding.item_vectors(v), n, width)
                s = model.encode(x, n.clamp(min=1), batch.users)
                views.append(F.normalize(s[torch.arange(s.shape[0]), (n - 1).clamp(min=0)], dim=-1))
            cl = info_nce(views[0], views[1], aug.contrastive_temperature)
            parts["contrastive"] = cl.detach()
            total = cl * aug.contrastive_weight if total is None else total + aug.contrastive_weight * cl
        if total is None:
            total = f.states.sum() * 0.0
        return total, parts


def build_task(task_cfg, dataset_manifest: dict, item_counts=None) -> SequenceTask:
    """The objective for `task_cfg` over the dataset `dataset_manifest` describes (its item count);
    `item_counts` (N + 1,) training frequency per item id (row 0 = padding) feeds the retrieval
    objective's logQ correction."""
    spec = FeatureSpec.from_manifest(dataset_manifest)
    counts = None if item_counts is None else torch.as_tensor(item_counts)
    return SequenceTask(task_cfg, spec.n_items, counts)
