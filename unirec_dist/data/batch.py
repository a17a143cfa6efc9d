"""Batches that models consume: behaviour sequences as KeyedJaggedTensors, built vectorized
from Arrow list columns (no per-row Python loops).

Key names used in KeyedJaggedTensors across the package:
    "item"  the behaviour sequence (item indices, time-ordered, oldest first)
    "user"  the user index, one value per row
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    import torch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

ITEM_KEY = "item"
USER_KEY = "user"


def last_n(lists: pa.ListArray | pa.ChunkedArray, max_len: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Flatten a list column keeping only the last `max_len` values of each row.

    Returns (values (sum of kept lengths,), lengths (B,)), both int64.
    """
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    if max_len is None or (lengths <= max_len).all():
        return values, lengths
    kept = np.minimum(lengths, max_len)
    ends = np.cumsum(lengths)
    starts = ends - kept
    # positions of kept values: for each row, range(starts[i], ends[i]), built without a loop
    row_offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(kept)[:-1])), kept)
    idx = np.arange(kept.sum()) + row_offsets
    return values[idx], kept


@dataclass
class SeqBatch:
    """A batch of users with their behaviour sequences.

    users:   (B,) int64 user indices (0 when unknown, e.g. a live session)
    seq:     KeyedJaggedTensor with key "item": each row's history, oldest first, at most max_len
    targets: (B, T) int64 target items padded with 0, for evaluation (None in serving)
    extra:   optional tensors: "ratings" (T,) float32 and "timestamps" (T,) int64 seconds, both
             aligned with seq's values; "query_time" (B,) int64 seconds, when each query is asked
             (evaluation: the first target's time; serving: the request's). Encoders with a time
             bias read the timestamps (models/encoders/base.py `uses_times`).

    Training batches for TorchRec's train pipeline (training/pipeline.py) also carry every id
    their step looks up, so that the pipeline can start the tables' input distribution of the
    next batch while this one computes:
    item_lookup: KeyedJaggedTensor "item": seq's values, then the distinct negative ids
    user_lookup: KeyedJaggedTensor "user": one id per row (encoders that read user vectors)
    negatives:   (P, K) or (ceil(P / group), K) int64 negative ids drawn by the loader for the
                 P target positions (tasks/retrieval.py), each among item_lookup's values
    """

    users: "torch.Tensor"
    seq: "KeyedJaggedTensor"
    targets: "torch.Tensor | None" = None
    extra: dict = field(default_factory=dict)
    item_lookup: "KeyedJaggedTensor | None" = None
    user_lookup: "KeyedJaggedTensor | None" = None
    negatives: "torch.Tensor | None" = None

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def to(self, device: "torch.device", non_blocking: bool = False) -> "SeqBatch":
        def move(v):
            return None if v is None else v.to(device, non_blocking=non_blocking)

        return SeqBatch(
            users=move(self.users), seq=move(self.seq), targets=move(self.targets),
            extra={k: move(v) if hasattr(v, "to") else v for k, v in self.extra.items()},
            item_lookup=move(self.item_lookup), user_lookup=move(self.user_lookup), negatives=move(self.negatives),
        )

    def record_stream(self, stream) -> None:
        """Mark every tensor as used on `stream` (TorchRec's Pipelineable: the pipeline copies
        batches to the GPU on a side stream)."""
        parts = [self.users, self.seq, self.targets, self.item_lookup, self.user_lookup, self.negatives,
                 *self.extra.values()]
        for v in parts:
            if v is not None and hasattr(v, "record_stream"):
                v.record_stream(stream)


def padded(lists: pa.ListArray | pa.ChunkedArray) -> "torch.Tensor":
    """A list<int> column as a (B, max_len) int64 tensor padded with 0 on the right."""
    import torch

    values, lengths = last_n(lists, None)
    width = int(lengths.max()) if len(lengths) else 0
    out = np.zeros((len(lengths), max(width, 1)), dtype=np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, cols] = values
    return torch.from_numpy(out)


def make_seq_batch(
    users: pa.Array | np.ndarray,
    histories: pa.ListArray | pa.ChunkedArray,
    max_len: int | None,
    targets: pa.ListArray | pa.ChunkedArray | None = None,
    timestamps: pa.ListArray | pa.ChunkedArray | None = None,
    query_times: pa.Array | np.ndarray | None = None,
) -> SeqBatch:
    """Build a SeqBatch from Arrow columns (user indices, list<int> histories, list<int> targets,
    list<int64> history timestamps aligned with the histories, (B,) query times)."""
    import torch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    values, lengths = last_n(histories, max_len)
    u = users.to_numpy(zero_copy_only=False) if hasattr(users, "to_numpy") else np.asarray(users)
    seq = KeyedJaggedTensor.from_lengths_sync(
        keys=[ITEM_KEY],
        values=torch.from_numpy(values),
        lengths=torch.from_numpy(lengths),
    )
    extra = {}
    if timestamps is not None:
        ts, ts_len = last_n(timestamps, max_len)
        if not np.array_equal(ts_len, lengths):
            raise ValueError("timestamps and histories differ in length")
        extra["timestamps"] = torch.from_numpy(ts)
    if query_times is not None:
        qt = query_times.to_numpy(zero_copy_only=False) if hasattr(query_times, "to_numpy") else query_times
        extra["query_time"] = torch.from_numpy(np.asarray(qt, dtype=np.int64))
    return SeqBatch(
        users=torch.from_numpy(u.astype(np.int64)),
        seq=seq,
        targets=None if targets is None else padded(targets),
        extra=extra,
    )


def query_batch(part: pa.Table, max_len: int | None) -> SeqBatch:
    """Evaluation queries (rows of valid/test Parquet: user, history, targets, and when the
    dataset has them history_timestamps and target_timestamps) as one SeqBatch; the query time
    is the first target's timestamp (when the next event happened)."""
    times = query = None
    if "history_timestamps" in part.column_names and "target_timestamps" in part.column_names:
        times = part["history_timestamps"]
        vals, lens = last_n(part["target_timestamps"], None)
        query = np.zeros(len(lens), np.int64)          # a row without targets counts for nothing
        query[lens > 0] = vals[(np.cumsum(lens) - lens)[lens > 0]]
    return make_seq_batch(part["user"], part["history"], max_len, part["targets"], times, query)


def iter_query_batches(table: pa.Table, batch_size: int, max_len: int | None):
    """Evaluation queries (valid/test Parquet: user, history, targets) as SeqBatches."""
    for start in range(0, table.num_rows, batch_size):
        yield query_batch(table.slice(start, batch_size), max_len)
