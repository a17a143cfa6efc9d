"""Next-item retrieval: sampled softmax (uniform per-position + in-batch negatives, logQ
correction) or full softmax over the catalogue. Its metrics are the full-ranking HR/NDCG@K.

YAML: `task: {kind: retrieval, retrieval: {loss: sampled_softmax, num_negatives: 128, temperature: 0.05}}`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from unirec_dist.errors import check
from unirec_dist.models.heads.retrieval import full_softmax_loss, sampled_softmax_loss
from unirec_dist.models.seqrec import SeqRecModel
from unirec_dist.tasks.base import Objective, SeqForward, TaskConfig
from unirec_dist.utils.dist import pad_to_ranks_max


@dataclass
class RetrievalConfig(TaskConfig):
    loss: Literal["sampled_softmax", "full_softmax"] = "sampled_softmax"
    num_negatives: int = 128                    # uniform negatives drawn per position
    negatives_group: int = 1                    # random positions sharing one draw (1: per position)
    in_batch_negatives: int = 0                 # batch positives shared as negatives (logQ-corrected)
    temperature: float = 0.05

    def validate(self) -> None:
        check(self.num_negatives >= 0, "task.retrieval.num_negatives", f"must be >= 0, got {self.num_negatives}")
        check(self.in_batch_negatives >= 0, "task.retrieval.in_batch_negatives",
              f"must be >= 0, got {self.in_batch_negatives}")
        check(self.negatives_group >= 1, "task.retrieval.negatives_group",
              f"must be >= 1, got {self.negatives_group}")
        check(self.temperature > 0, "task.retrieval.temperature", f"must be > 0, got {self.temperature}")
        if self.loss == "sampled_softmax":
            check(self.num_negatives + self.in_batch_negatives >= 1, "task.retrieval.num_negatives",
                  "sampled_softmax needs at least one negative")


#: a catalogue of at most this many rows is looked up whole once per step (cheaper than gathering
#: at this size); a larger one only the rows the step's loss uses, so a step's memory and time do not
#: grow with the catalogue (a 20M-item table sharded over workers is never materialised on one)
WHOLE_CATALOGUE_MAX_ROWS = 1 << 16


class RetrievalObjective(Objective):
    """Sampled softmax (uniform per-position + in-batch negatives, logQ) or full softmax."""

    ranks_items = True
    monitor = ("NDCG@10", "max")

    def __init__(self, cfg: RetrievalConfig, item_counts: torch.Tensor | None = None) -> None:
        self.cfg = cfg
        self.log_pop = None
        if cfg.in_batch_negatives > 0 and item_counts is not None:
            c = item_counts.double().clamp(min=1)
            self.log_pop = (c / c.sum()).log().float()

    @classmethod
    def from_config(cls, cfg: RetrievalConfig, n_items: int, item_counts: torch.Tensor | None) -> RetrievalObjective:
        return cls(cfg, item_counts)

    def __call__(self, model: SeqRecModel, f: SeqForward) -> torch.Tensor:
        q = model.norm(f.states[f.valid])                      # (P, D)
        pos = f.ids[:, 1:][f.valid]                            # (P,)
        n_rows = model.embedding.n_items
        lp = None if self.log_pop is None else self.log_pop.to(q.device)
        if f.lookup is not None:
            # a pipelined batch: the positives and the loader's negatives were looked up with it;
            # a small catalogue is indexed whole, as below (rows not looked up are never asked for)
            lookup = f.lookup
            looked: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] = \
                model.norm(lookup.catalogue()) if n_rows <= WHOLE_CATALOGUE_MAX_ROWS else \
                (lambda ids: model.norm(lookup(ids)))
            return sampled_softmax_loss(q, pos, looked, self.cfg.temperature, self.cfg.num_negatives,
                                        self.cfg.in_batch_negatives, lp, group=self.cfg.negatives_group,
                                        n_rows=n_rows, negatives=f.negatives)
        if self.cfg.loss == "full_softmax" or n_rows <= WHOLE_CATALOGUE_MAX_ROWS:
            items: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] = \
                model.norm(model.embedding.all_item_vectors())
            if self.cfg.loss == "full_softmax":
                return full_softmax_loss(q, pos, items, self.cfg.temperature)
        else:
            def items(ids: torch.Tensor) -> torch.Tensor:
                # called once per step with the step's distinct ids, whose count differs by rank:
                # padded (id 0, dropped after) for the content tables (utils/dist.py pad_to_ranks_max)
                return model.norm(model.embedding.item_vectors(pad_to_ranks_max(ids)))[:ids.numel()]
        return sampled_softmax_loss(q, pos, items, self.cfg.temperature, self.cfg.num_negatives,
                                    self.cfg.in_batch_negatives, lp, group=self.cfg.negatives_group, n_rows=n_rows)
