"""Training data: every user's training sequence from train.parquet, served as length-grouped
SeqBatches built vectorized from flat numpy arrays (no per-row Python).

Each batch row holds the user's last max_len + 1 items (input positions 0..n-2 predict items
1..n-1 in one causal pass). `train_on="train+valid"` appends the validation target to each
user's sequence (every item but the test target), for a final run evaluated on test.

Distributed use: give each worker `rank` and `world_size`; every epoch, all ranks compute the
same permutation, cut it into chunks of batch_size * world_size users of similar length, and
rank r takes rows r, r + world, ... of each chunk. Slices are disjoint, every rank gets the same
number of batches (so collectives stay in step), and the ranks' batches at one step have
similar lengths (balanced work).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from unirec_dist.data.batch import ITEM_KEY, SeqBatch
from unirec_dist.errors import DataError

log = logging.getLogger(__name__)

REQUIRED_FILES = ("train.parquet", "valid.parquet", "items.parquet")


def open_prepared(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """Check a prepared dataset dir for training (PreparedDataset.open's checks: exists, manifest
    readable, format version supported; plus the files training reads) and return (path, manifest).
    Raises DataError with one line otherwise."""
    from unirec_dist.data.dataset import PreparedDataset

    ds = PreparedDataset.open(path)
    for f in REQUIRED_FILES:
        if not (ds.root / f).is_file():
            raise DataError(f"data.path: {ds.root} has no {f}; the dataset is incomplete (re-run `unirec prepare`)")
    return ds.root, ds.manifest


def _flat(lists: pa.ChunkedArray | pa.Array, dtype) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(dtype)
    return values, lengths


@dataclass
class TrainSequences:
    """All training sequences, flat: users (U,), values (T,), offsets (U + 1,), ratings (T,) or None."""

    users: np.ndarray
    values: np.ndarray
    offsets: np.ndarray
    ratings: np.ndarray | None = None

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.users)

    def item_counts(self, n_items: int) -> np.ndarray:
        """(n_items,) training frequency of every item id (row 0 = padding, 0)."""
        c = np.bincount(self.values, minlength=n_items).astype(np.int64)
        c[0] = 0
        return c

    @classmethod
    def from_dir(cls, path: str | os.PathLike, train_on: str = "train") -> "TrainSequences":
        path = Path(path)
        train = pq.read_table(path / "train.parquet")
        for col in ("user", "items"):
            if col not in train.column_names:
                raise DataError(f"{path / 'train.parquet'}: missing column {col!r}")
        users = train["user"].to_numpy().astype(np.int64)
        values, lengths = _flat(train["items"], np.int64)
        ratings = _flat(train["ratings"], np.float32)[0] if "ratings" in train.column_names else None
        if train_on == "train+valid":
            valid = pq.read_table(path / "valid.parquet")
            v_users = valid["user"].to_numpy().astype(np.int64)
            t_vals, t_len = _flat(valid["targets"], np.int64)
            has = t_len > 0
            first = (np.cumsum(t_len) - t_len)[has]
            v_users, v_vals = v_users[has], t_vals[first]
            v_rat = None
            if ratings is not None and "target_ratings" in valid.column_names:
                v_rat = _flat(valid["target_ratings"], np.float32)[0][first]
            # element-level concat then a stable sort by user keeps train items before the target
            elem_user = np.concatenate([np.repeat(users, lengths), v_users])
            order = np.argsort(elem_user, kind="stable")
            values = np.concatenate([values, v_vals])[order]
            ratings = np.concatenate([ratings, v_rat])[order] if v_rat is not None else None
            users, lengths = np.unique(elem_user[order], return_counts=True)
        keep = lengths >= 2          # a single item gives no (input, next item) pair
        if not keep.all():
            elem_keep = np.repeat(keep, lengths)
            values = values[elem_keep]
            ratings = ratings[elem_keep] if ratings is not None else None
            users, lengths = users[keep], lengths[keep]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        if len(users) == 0:
            raise DataError(f"{path / 'train.parquet'}: no user has 2 or more training items")
        return cls(users=users, values=values, offsets=offsets, ratings=ratings)


class SequenceBatches:
    """Re-iterable training batches (one pass = one epoch of this rank's slice).

    Yields SeqBatch(users (B,), seq KJT "item" (last max_len + 1 items per row),
    extra {"ratings": (T,) float32} when the dataset has ratings).
    """

    def __init__(self, seqs: TrainSequences, batch_size: int, max_len: int, seed: int = 0,
                 length_grouped: bool = True, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.seqs, self.batch_size, self.max_len = seqs, batch_size, max_len
        self.seed, self.length_grouped, self.shuffle = seed, length_grouped, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.eff_len = np.minimum(seqs.lengths, max_len + 1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sampler(self) -> "SequenceBatches":
        # Lightning calls `<loader>.sampler.set_epoch(epoch)` before each epoch's iter()
        return self

    def _chunks(self, epoch: int) -> list[np.ndarray]:
        U = len(self.seqs)
        rng = np.random.default_rng([self.seed, epoch])
        if self.length_grouped:
            # sort by length with a +-10% random jitter, so batch composition changes per epoch
            jitter = self.eff_len * np.exp(rng.uniform(-0.1, 0.1, U)) if self.shuffle else self.eff_len
            order = np.lexsort((rng.random(U), jitter))
        else:
            order = rng.permutation(U) if self.shuffle else np.arange(U)
        per = self.batch_size * self.world_size
        chunks = [order[i:i + per] for i in range(0, U, per)]
        if self.shuffle:
            chunks = [chunks[i] for i in rng.permutation(len(chunks))]
        out = []
        for c in chunks:
            n = len(c) // self.world_size     # equal share per rank; drops < world_size rows
            if n:
                out.append(c[self.rank::self.world_size][:n])
        return out

    def __len__(self) -> int:
        U = len(self.seqs)
        per = self.batch_size * self.world_size
        full, rest = divmod(U, per)
        return full + (1 if rest // self.world_size else 0)

    def make_batch(self, rows: np.ndarray) -> SeqBatch:
        import torch
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        s = self.seqs
        n = self.eff_len[rows]
        starts = s.offsets[rows + 1] - n
        idx = np.repeat(starts - (np.cumsum(n) - n), n) + np.arange(n.sum())
        seq = KeyedJaggedTensor.from_lengths_sync(
            keys=[ITEM_KEY], values=torch.from_numpy(s.values[idx]), lengths=torch.from_numpy(n.astype(np.int64)))
        extra = {}
        if s.ratings is not None:
            extra["ratings"] = torch.from_numpy(s.ratings[idx])
        return SeqBatch(users=torch.from_numpy(s.users[rows]), seq=seq, extra=extra)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1      # a plain re-iteration (Lightning) moves to the next epoch's order
        for rows in self._chunks(epoch):
            yield self.make_batch(rows)


def read_valid(path: str | os.PathLike, max_users: int | None = None, seed: int = 0) -> pa.Table:
    """valid.parquet queries with at least one target (optionally a fixed random subset)."""
    t = pq.read_table(Path(path) / "valid.parquet")
    for col in ("user", "history", "targets"):
        if col not in t.column_names:
            raise DataError(f"{Path(path) / 'valid.parquet'}: missing column {col!r}")
    t = t.filter(pc.greater(pc.list_value_length(t["targets"]), 0))
    if max_users is not None and t.num_rows > max_users:
        rng = np.random.default_rng(seed)
        t = t.take(np.sort(rng.choice(t.num_rows, max_users, replace=False)))
    return t
