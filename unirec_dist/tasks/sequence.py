"""The configured training objective over (model, SeqBatch): the weighted sum of the active
registered tasks' losses (tasks/registry.py) on one shared forward pass, plus the optional
augmentation and contrastive term. No Lightning here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from unirec_dist.embeddings.features import FeatureSpec
from unirec_dist.models.seqrec import SeqRecModel, pad_jagged
from unirec_dist.tasks.augment import augment
from unirec_dist.tasks.base import Objective, forward_sequences
from unirec_dist.tasks.registry import TASKS


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
        self.objectives: dict[str, Objective] = {
            name: TASKS[name].objective.from_config(task_cfg.config(name), n_items, item_counts)
            for name in self.weights
        }

    def loss(self, model: SeqRecModel, batch, looked: dict | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`looked`: the rows `model(batch)` looked up for a pipelined batch (training/pipeline.py)."""
        aug = self.cfg.augment
        jt = batch.seq["item"]
        values, lengths = jt.values().long(), jt.lengths().long()
        if aug.active and aug.contrastive_weight == 0 and model.training:
            values, lengths = augment(values, lengths, aug)
            if "ratings" in batch.extra:
                batch.extra = {k: v for k, v in batch.extra.items() if k != "ratings"}
        f = forward_sequences(model, batch, values, lengths, looked=looked)
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
