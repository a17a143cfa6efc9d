"""Which history items made the model recommend an item, and by how much.

Methods (every response names the one used):

* ``occlusion`` (any Retriever; the default when the model exposes no attention): the weight of
  history position i for item j is score(history, j) - score(history without position i, j),
  i.e. how much j's score drops when that one item is left out. Faithful to the model (it is the
  model's own scores), per recommended item, and it needs nothing beyond the Retriever protocol:
  one batched `query_embeddings` call over the L leave-one-out histories. A weight can be
  negative (the item pulled j down). Models whose query ignores the history (plain MF with a
  known user) get all-zero weights, which is the truth about them.
* ``similarity`` (any Retriever): cosine similarity between history item i's vector and item j's
  vector. Cheap and model-agnostic, but it describes the embedding space, not the encoder.
* ``attention`` (only models with an `attention_maps` method): attention rollout (Abnar &
  Zuidema 2020) of the sequence encoder: per layer, heads averaged, 0.5 A + 0.5 I, rows
  renormalised, layers multiplied; the weight of position i is the rolled-out attention of the
  last position (the one the query is read from) on i. It describes how the query vector was
  formed, so it is the SAME for every recommended item (`per_item` is false).

Optional model method used for ``attention`` (models without it still get the other two)::

    attention_maps(batch: SeqBatch) -> list[Tensor]   # one per layer, (B, heads, L, L),
        # over the history positions the encoder read (the last min(len, max_len) items, oldest
        # first, row = query position, column = key position), rows summing to 1. For B = 1
        # L equals that history length (no padding positions).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

METHODS = ("auto", "occlusion", "similarity", "attention")


@dataclass
class Attribution:
    """weights: (K, L) weight of each kept history position for each target item;
    positions: (L,) index into the full history of each kept position."""

    method: str
    per_item: bool
    weights: np.ndarray
    positions: np.ndarray


def has_attention(model: Any) -> bool:
    return callable(getattr(model, "attention_maps", None))


def resolve_method(model: Any, method: str) -> str:
    from unirec_dist.serving.recommender import RequestError

    if method not in METHODS:
        raise RequestError(f"explain method must be one of {', '.join(METHODS)}; got {method!r}")
    if method == "auto":
        return "attention" if has_attention(model) else "occlusion"
    if method == "attention" and not has_attention(model):
        raise RequestError(
            f"model {type(model).__name__} exposes no attention weights; use method 'occlusion' or 'similarity'"
        )
    return method


def _batch(users: "torch.Tensor", rows: list["torch.Tensor"], times: list["torch.Tensor"] | None = None):
    """A SeqBatch of item rows; times: per row (len + 1,) event times then the query time."""
    import torch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from unirec_dist.data.batch import ITEM_KEY, SeqBatch

    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    values = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
    seq = KeyedJaggedTensor.from_lengths_sync(keys=[ITEM_KEY], values=values, lengths=lengths)
    batch = SeqBatch(users=users, seq=seq)
    if times is not None:
        batch.extra["timestamps"] = torch.cat([t[:-1] for t in times])
        batch.extra["query_time"] = torch.stack([t[-1] for t in times])
    return batch


def attribute(model: Any, items: "torch.Tensor", history: np.ndarray, user: int, targets: np.ndarray,
              method: str, times: np.ndarray | None = None) -> Attribution:
    """Weights of the history positions the model reads (the last `model.max_len`) for `targets`.

    items: (N + 1, D) item matrix; history: (H,) item ids, oldest first; targets: (K,) item ids;
    times: (H + 1,) event times then the query time, for a model with a time bias.
    """
    import torch

    max_len = int(getattr(model, "max_len", len(history)) or len(history))
    start = max(0, len(history) - max_len)
    kept = torch.from_numpy(np.asarray(history[start:], dtype=np.int64))
    positions = np.arange(start, len(history))
    tgt = torch.from_numpy(np.asarray(targets, dtype=np.int64))
    L = kept.shape[0]
    with torch.inference_mode():
        if method == "similarity":
            h = torch.nn.functional.normalize(items[kept].float(), dim=1)
            t = torch.nn.functional.normalize(items[tgt].float(), dim=1)
            w = (t @ h.T).numpy()
            return Attribution(method, True, w, positions)
        if method == "occlusion":
            rows = [kept] + [torch.cat([kept[:i], kept[i + 1:]]) for i in range(L)]
            tt = None
            if times is not None:   # each occluded row drops that event's time too
                t = torch.from_numpy(np.asarray(times[start:], dtype=np.int64))
                tt = [t] + [torch.cat([t[:i], t[i + 1:]]) for i in range(L)]
            users = torch.full((L + 1,), int(user), dtype=torch.long)
            q = model.query_embeddings(_batch(users, rows, tt)).float()
            s = q @ items[tgt].float().T  # (L + 1, K)
            w = (s[0:1] - s[1:]).T.numpy()  # (K, L)
            return Attribution(method, True, w, positions)
        if method == "attention":
            maps = model.attention_maps(_batch(torch.tensor([int(user)]), [kept]))
            w = rollout([m[0] for m in maps], L)
            return Attribution(method, False, np.broadcast_to(w, (len(targets), L)).copy(), positions)
    raise ValueError(f"unknown explain method {method!r}")


def rollout(maps: list["torch.Tensor"], length: int) -> np.ndarray:
    """Attention rollout over layers; maps: per layer (heads, L, L). Returns (L,) weights of the
    last position on every position, summing to 1."""
    import torch

    roll = torch.eye(length)
    for a in maps:
        a = a.float()
        if a.dim() == 3:
            a = a.mean(0)
        if a.shape != (length, length):
            raise ValueError(f"attention map of shape {tuple(a.shape)} does not match history length {length}")
        a = 0.5 * a + 0.5 * torch.eye(length)
        a = a / a.sum(dim=1, keepdim=True)
        roll = a @ roll
    return roll[-1].numpy()
