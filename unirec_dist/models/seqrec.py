"""The sequential recommender: universal embedding -> encoder -> (dot-product retrieval, heads).

Implements the Retriever protocol (models/protocol.py). Plain single-device PyTorch + TorchRec
modules: sharding is applied from outside (training/strategy.py), never here.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unirec_dist.models.embedding import UniversalEmbedding
from unirec_dist.models.encoders.base import SequenceEncoder


def pad_jagged(values: torch.Tensor, lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Jagged rows -> right-padded dense. values (T, D) or (T,), lengths (B,) -> (B, width, D) / (B, width)."""
    B = lengths.shape[0]
    offsets = torch.cumsum(lengths, 0) - lengths
    row = torch.repeat_interleave(torch.arange(B, device=values.device), lengths, output_size=values.shape[0])
    col = torch.arange(values.shape[0], device=values.device) - offsets[row]
    out = values.new_zeros((B, width) + tuple(values.shape[1:]))
    out[row, col] = values
    return out


class SeqRecModel(nn.Module):
    """Universal embedding + sequence encoder, scoring by dot product.

    item_embeddings() -> (n_items, D);  query_embeddings(batch) -> (B, D);
    encode(items (B, L, D), lengths (B,), users (B,)) -> (B, L, D) per-position states.
    The encoder is any SequenceEncoder (models/encoders/base.py); what it needs (user vectors)
    and offers (a cheaper last-state path) is read from it, never from its name.
    """

    def __init__(self, embedding: UniversalEmbedding, encoder: SequenceEncoder, max_len: int,
                 normalize: bool = True, heads: dict[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.embedding = embedding
        self.encoder = encoder
        self.max_len = max_len
        self.normalize = normalize
        self.heads = nn.ModuleDict(heads or {})

    # -- building blocks used by tasks ------------------------------------------------------
    def norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize else x

    def embed_sequences(self, seq) -> tuple[torch.Tensor, torch.Tensor]:
        """KeyedJaggedTensor (key "item") -> (raw item vectors (B, Lmax, D), lengths (B,))."""
        jt = seq["item"]
        lengths = jt.lengths().long()
        width = max(int(lengths.max()) if lengths.numel() else 1, 1)
        values = jt.values().long()
        if values.numel() == 0:     # every history empty (an empty lookup is not allowed)
            return torch.zeros((lengths.shape[0], width, self.embedding.dim), device=values.device), lengths
        # look up the real items only, then pad: padded slots cost no lookup and stay exactly zero
        return pad_jagged(self.embedding.item_vectors(values), lengths, width), lengths

    def user_vectors(self, users: torch.Tensor | None) -> torch.Tensor | None:
        """users (B,) ids -> (B, D) id vectors for an encoder that reads them, else None."""
        return self.embedding.user_vectors(users) if self.encoder.needs_user_vectors else None

    def encode(self, items: torch.Tensor, lengths: torch.Tensor, users: torch.Tensor | None = None,
               times: torch.Tensor | None = None, user_vecs: torch.Tensor | None = None) -> torch.Tensor:
        """items (B, L, D), lengths (B,) >= 1, users (B,) ids, times (B, L + 1) int64 (read by an
        encoder with a time bias; see SequenceEncoder) -> (B, L, D) un-normalised states at every
        position. `user_vecs` (B, D): the users' vectors when the caller looked them up already
        (the train pipeline's `forward`), else they are looked up from `users`."""
        uv = user_vecs if user_vecs is not None else self.user_vectors(users)
        if self.encoder.uses_times:
            return self.encoder(items, lengths, uv, times=times)
        return self.encoder(items, lengths, uv)

    # -- the table lookups of a training step ------------------------------------------------
    def forward(self, batch) -> dict[str, Any]:
        """A pipelined training batch (SeqBatch with `item_lookup`, and `user_lookup` when the
        encoder reads user vectors) -> {"item": JaggedTensor, "user": JaggedTensor}: every id
        table lookup of the step, each table called once on a KeyedJaggedTensor read straight
        off the batch. This is the shape TorchRec's TrainPipelineSparseDist finds by tracing
        `model(batch)`, so it can run the next batch's input distribution while this one
        computes (training/pipeline.py); the rest of the step reads these rows
        (tasks/base.py `forward_sequences(looked=...)`)."""
        item_ec, user_ec = self.embedding.item_ec, self.embedding.user_ec
        if item_ec is None:
            raise ValueError("a pipelined step needs the item id table (model.embedding.item_id)")
        out = {"item": item_ec(batch.item_lookup)["item"]}
        if self.encoder.needs_user_vectors:
            if user_ec is None:
                raise ValueError("this encoder reads user vectors but the model has no user table")
            out["user"] = user_ec(batch.user_lookup)["user"]
        return out

    def query_times(self, batch, lengths: torch.Tensor, width: int) -> torch.Tensor | None:
        """The (B, width + 1) times grid of a query batch for an encoder that reads times: history
        timestamps, then the query time at index lengths[b]; None for other encoders."""
        if not self.encoder.uses_times:
            return None
        if "timestamps" not in batch.extra or "query_time" not in batch.extra:
            raise ValueError("this model's encoder reads timestamps (model.encoder.time_bias): queries need "
                             "history timestamps and a query time")
        times = pad_jagged(batch.extra["timestamps"].long(), lengths, width + 1)
        times[torch.arange(times.shape[0], device=times.device), lengths] = batch.extra["query_time"].long()
        return times

    # -- Retriever --------------------------------------------------------------------------
    @property
    def num_item_rows(self) -> int:
        """Rows of the item matrix: the catalogue N + 1 (row 0 = padding)."""
        return self.embedding.n_items

    def item_rows(self, lo: int, hi: int) -> torch.Tensor:
        """(hi - lo, D) vectors of item ids lo..hi-1 (normalised if configured; the padding row 0
        zeroed): a block of `item_embeddings()` computed without the rest (sharded scoring)."""
        if not 0 <= lo <= hi <= self.num_item_rows:
            raise ValueError(f"item rows [{lo}, {hi}) outside the catalogue's {self.num_item_rows}")
        v = self.norm(self.embedding.item_vectors(torch.arange(lo, hi, device=self.embedding.device)))
        if lo == 0 and hi > 0:
            v = torch.cat([torch.zeros_like(v[:1]), v[1:]], dim=0)
        return v

    def item_embeddings(self) -> torch.Tensor:
        """(n_items, D) item vectors (normalised if configured), row 0 (padding) zeroed."""
        return self.item_rows(0, self.num_item_rows)

    def query_embeddings(self, batch) -> torch.Tensor:
        """SeqBatch -> (B, D): the state after the last history item (user vector for MF)."""
        items, lengths = self.embed_sequences(batch.seq)
        if items.shape[1] > self.max_len:   # batch built with a longer max_len: keep the newest
            raise ValueError(f"history longer than max_len {self.max_len}; build batches with max_len")
        # an empty history has no state: zeros (scores all items alike), except for encoders that
        # do not read the history (MF: the user's vector)
        times = self.query_times(batch, lengths, items.shape[1])
        # only a time-aware encoder (`uses_times`) takes `times`
        kw: dict[str, Any] = {"times": times} if times is not None else {}
        return self.norm(self.encoder.last_states(items, lengths, self.user_vectors(batch.users), **kw))
