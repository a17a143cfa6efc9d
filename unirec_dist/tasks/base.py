"""The task interface: what every training objective takes, returns and declares.

A task is two classes in one file of this package, registered by name in registry.py:

* a config dataclass (subclass of `TaskConfig`): the keys of `task.<name>` in a training YAML,
  with a `validate()` that names the dotted key it refuses;
* an `Objective` built by `from_config(cfg, n_items, item_counts)`, called on the shared forward
  pass of a batch (`SeqForward`) to give its scalar loss.

`task.kind` picks one registered task (or `multi`: a weighted sum of several, `task.weights`).
The trainer, the model factory (heads), the data checks and the metrics ask the objective's
class attributes, never a task's name. A task defined outside the package registers with
`TASKS.register(name, TaskEntry(Config, Objective))` before its config is loaded.

A training SeqBatch holds each user's last max_len + 1 items in `seq` (key "item"); position t
of the encoder reads items 0..t and predicts item t + 1, so one causal pass trains every
position. `batch.extra["ratings"]` (T,) float, aligned with seq values, feeds the rating task;
`batch.extra["timestamps"]` (T,) int64, aligned likewise, feeds an encoder with a time bias.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from unirec_dist.models.seqrec import SeqRecModel, pad_jagged
from unirec_dist.utils.dist import pad_to_ranks_max


@dataclass
class SeqForward:
    """Shared forward of one training batch.

    states  (B, L, D) encoder states at input positions (un-normalised)
    items   (B, L + 1, D) raw item vectors of the whole sequence
    ids     (B, L + 1) item ids, 0 = padding/masked
    valid   (B, L) bool: position t has a real next item ids[:, t + 1]
    ratings (B, L + 1) float or None
    lookup  the raw item vectors of the ids the step looked up already (positives and the
            loader's negatives: `LookedItems`), when the batch went through the model's
            `forward` (the train pipeline); None: the loss looks items up in the model's tables
    negatives the loader's negative ids (SeqBatch.negatives), with `lookup`
    """

    states: torch.Tensor
    items: torch.Tensor
    ids: torch.Tensor
    valid: torch.Tensor
    ratings: torch.Tensor | None
    lookup: LookedItems | None = None
    negatives: torch.Tensor | None = None


def forward_sequences(model: SeqRecModel, batch, values: torch.Tensor | None = None,
                      lengths: torch.Tensor | None = None, looked: dict[str, Any] | None = None) -> SeqForward:
    """The shared forward of a training batch. `looked`: the rows `model(batch)` returned for a
    pipelined batch (SeqBatch.item_lookup / user_lookup), read instead of calling the tables."""
    jt = batch.seq["item"]
    if values is None:
        values, lengths = jt.values().long(), jt.lengths().long()
    assert lengths is not None, "values without lengths"
    # pad_width: the ranks' common width (training/strategy.common_pad_width), when distributed
    width = max(int(lengths.max()), 2, int(batch.extra.get("pad_width", 0)))
    ids = pad_jagged(values, lengths, width)                   # (B, L+1)
    lookup = user_vecs = None
    if looked is None:
        # look up the padded id grid (pads hit row 0 and are masked downstream): cheaper on CPU
        # than scattering jagged vectors into a padded tensor and back in backward
        items = model.embedding.item_vectors(ids.reshape(-1)).view(ids.shape[0], width, -1)   # (B, L+1, D)
    else:
        items, lookup = _looked_up_items(model, batch, looked["item"].values(), lengths, ids)
        if "user" in looked:
            user_vecs = looked["user"].values()[:, :model.embedding.dim]
    in_len = (lengths - 1).clamp(min=0)
    times = None
    if model.encoder.uses_times:
        # (B, L + 1): input position t's time, and at t + 1 its target's (the query time)
        times = pad_jagged(batch.extra["timestamps"].long(), lengths, width)
    states = model.encode(items[:, :-1], in_len, batch.users, times, user_vecs=user_vecs)
    L = width - 1
    valid = (torch.arange(L, device=ids.device)[None, :] < in_len[:, None]) & (ids[:, 1:] > 0)
    ratings = None
    if "ratings" in batch.extra and batch.extra["ratings"] is not None and batch.extra["ratings"].numel() == values.numel():
        ratings = pad_jagged(batch.extra["ratings"].float(), lengths, width)
    return SeqForward(states, items, ids, valid, ratings, lookup, batch.negatives if looked is not None else None)


class LookedItems:
    """The raw vectors of the distinct item ids a pipelined step looked up: `self(ids)` -> (M, D)
    for ids among them (ValueError otherwise); `catalogue()` -> (n_rows, D), those rows at their
    ids and zeros elsewhere (what a small catalogue's loss indexes directly, as the unpipelined
    step indexes its whole-catalogue lookup)."""

    #: up to this many catalogue rows an id -> row map is one (n_rows,) index (cheaper than a
    #: binary search over 2M negatives); above it, a binary search over the looked-up ids
    DENSE_MAP_MAX_ROWS = 1 << 22

    def __init__(self, ids: torch.Tensor, vecs: torch.Tensor, n_rows: int) -> None:
        self.ids, self.vecs, self.n_rows = ids, vecs, n_rows      # ids sorted, distinct
        self._slot: torch.Tensor | None = None
        if n_rows <= self.DENSE_MAP_MAX_ROWS:
            self._slot = torch.full((n_rows,), -1, dtype=torch.long, device=ids.device)
            self._slot[ids] = torch.arange(ids.numel(), device=ids.device)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        if self._slot is not None:
            at = self._slot[q]
            found = bool((at >= 0).all())
        else:
            at = torch.searchsorted(self.ids, q).clamp(max=self.ids.numel() - 1)
            found = bool((self.ids[at] == q).all())
        if not found:
            raise ValueError("an id the loss asks for was not looked up with the batch")
        return self.vecs[at]

    def catalogue(self) -> torch.Tensor:
        out = self.vecs.new_zeros((self.n_rows, self.vecs.shape[1]))
        return out.index_put((self.ids,), self.vecs)


def _looked_up_items(model: SeqRecModel, batch, rows: torch.Tensor, lengths: torch.Tensor,
                     ids: torch.Tensor) -> tuple[torch.Tensor, LookedItems]:
    """A pipelined batch's item rows (SeqBatch.item_lookup: the sequences' T ids, then the
    distinct negatives) -> (the (B, W, D) item vectors of the id grid `ids`, `LookedItems` of
    every id among them). Content features are added here, grid-wise as in the unpipelined step
    (their tables are not pipelined: their ids come from the item buffers)."""
    E = model.embedding
    B, W = ids.shape
    T = int(lengths.sum())
    grid = pad_jagged(rows[:T], lengths, W).reshape(B * W, -1)
    items = E.item_vectors_from(ids.reshape(-1), grid).view(B, W, -1)
    neg_ids, neg_rows = batch.item_lookup.values()[T:].long(), rows[T:]
    U = neg_ids.numel()
    if E.has_content:
        # the distinct negatives' count differs by rank: padded (id 0, dropped after) for the
        # content tables' lookup (utils/dist.py pad_to_ranks_max says why)
        padded = pad_to_ranks_max(neg_ids)
        neg_rows = torch.cat([neg_rows, neg_rows.new_zeros((padded.numel() - U, neg_rows.shape[1]))])
        neg_vecs = E.item_vectors_from(padded, neg_rows)[:U]
    else:
        neg_vecs = E.item_vectors_from(neg_ids, neg_rows)
    known = torch.cat([ids.reshape(-1), neg_ids])
    vecs = torch.cat([items.reshape(B * W, -1), neg_vecs])
    uniq, inv = torch.unique(known, return_inverse=True)
    first = torch.full((uniq.numel(),), known.numel(), dtype=torch.long, device=known.device)
    first.scatter_reduce_(0, inv, torch.arange(known.numel(), device=known.device), "amin")
    return items, LookedItems(uniq, vecs[first], E.n_items)


class TaskConfig:
    """Base of the tasks' config dataclasses (`task.<name>` in a training YAML)."""

    def validate(self) -> None:
        """Checks of this section alone (sizes >= 1, ...), raising ConfigError("task.<name>.key: ...")."""


class Objective(abc.ABC):
    """One task's loss over the shared forward pass, and what it needs and reports.

    Capabilities (class attributes; the trainer, config checks and metrics read them instead of
    the task's name):
      needs_ratings: training rows must carry ratings (train.parquet has a rating column).
      reads_history: the encoder's states must depend on the history items (not MF).
      ranks_items: its validation metrics are the full-ranking HR/NDCG@K (retrieval).
      monitor: (metric, "max" or "min"), the validation metric that ranks checkpoints when this
        is the first active task in registration order.
    """

    needs_ratings: ClassVar[bool] = False
    reads_history: ClassVar[bool] = False
    ranks_items: ClassVar[bool] = False
    monitor: ClassVar[tuple[str, str]] = ("NDCG@10", "max")

    @classmethod
    @abc.abstractmethod
    def from_config(cls, cfg: Any, n_items: int, item_counts: torch.Tensor | None) -> Objective:
        """Build from the task's config dataclass, the vocabulary size N + 1 (row 0 = padding)
        and the training frequency of each item id (N + 1,), or None."""

    @abc.abstractmethod
    def __call__(self, model: SeqRecModel, f: SeqForward) -> torch.Tensor:
        """The scalar loss of this task on one batch's forward pass."""

    @classmethod
    def build_head(cls, cfg: Any, dim: int) -> nn.Module | None:
        """The parameters the task adds to the model (`model.heads[name]`), or None."""
        return None

    @classmethod
    def metrics(cls, cfg: Any, model: SeqRecModel, queries: Any, n_items: int, batch_size: int,
                seed: int) -> dict[str, float]:
        """Validation/test metrics of this task's head on a query table (history, targets,
        target_ratings: a prepared split); {} when the task has none of its own."""
        return {}


class TaskEntry(NamedTuple):
    """One registered task: its config dataclass and its objective (built by from_config)."""
    config: type[TaskConfig]
    objective: type[Objective]
