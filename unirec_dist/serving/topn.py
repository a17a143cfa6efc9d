"""Top-N lists for known users of a prepared dataset, with raw ids, written as Parquet.

    recommend(retriever, dataset, users, k, exclude_seen=True, display_fields=None) -> pa.Table
        user: string (raw id), rank: int32 (1 = best), item: string (raw id), score: float32,
        then one optional string column per display field of the item (title, genres, ...:
        `display_fields`, or the default ones the dataset has; see serving/display.py)

A user's query is built from ALL their known interactions (the prepared `interactions` table,
time-ordered; the model reads the last `max_len`), so the list is "what next after everything we
know". Ranking is the project's one exact top-K (`unirec_dist.metrics.sharded.ranked_lists`):
full catalogue, padding never returned, ties by lower item index; with an initialised process
group each rank scores its own rows of the catalogue and every rank gets the same merged lists. With `exclude_seen`, items the user already
interacted with are not recommended; a user with fewer than k unseen items gets a shorter list.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unirec_dist.data.batch import last_n, make_seq_batch
from unirec_dist.errors import DataError
from unirec_dist.metrics.evaluate import QUERY_BLOCK, _device
from unirec_dist.metrics.sharded import ranked_lists

if TYPE_CHECKING:
    import torch

    from unirec_dist.models.protocol import Retriever

log = logging.getLogger(__name__)

SCHEMA = pa.schema([("user", pa.string()), ("rank", pa.int32()), ("item", pa.string()), ("score", pa.float32())])
_LISTED = 20  # unknown ids named in the error message (then "... and N more")


def resolve_users(dataset: Any, users: Sequence[str]) -> np.ndarray:
    """Raw user ids -> (U,) int64 vocab indices, in the given order. Unknown ids raise one
    DataError that lists them (the first 20, then a count); nothing is dropped silently."""
    vocab = dataset.vocab("user")
    raw = pa.array([str(u) for u in users], pa.string())
    pos = pc.index_in(raw, value_set=vocab["raw"].cast(pa.string()))
    missing = pc.is_null(pos).to_numpy(zero_copy_only=False)
    if missing.any():
        unknown = [str(u) for u, m in zip(users, missing) if m]
        shown = ", ".join(unknown[:_LISTED]) + (f", ... and {len(unknown) - _LISTED} more" if len(unknown) > _LISTED else "")
        raise DataError(f"{len(unknown)} user id(s) not in the dataset's user vocab: {shown}")
    return vocab["index"].take(pos).to_numpy(zero_copy_only=False).astype(np.int64)


def all_users(dataset: Any) -> list[str]:
    """Every raw user id of the dataset, in vocab index order."""
    vocab = dataset.vocab("user")
    order = pc.sort_indices(vocab["index"])
    return vocab["raw"].take(order).cast(pa.string()).to_pylist()


def user_histories(dataset: Any, user_index: np.ndarray, column: str = "item") -> pa.ListArray:
    """(U,) user indices -> each user's full time-ordered list of `column` ("item" -> int32,
    "timestamp" -> int64) from `interactions`."""
    inter = dataset.table("interactions", columns=["user", column])
    u = inter["user"].to_numpy().astype(np.int64)
    items = inter[column].to_numpy().astype(np.int64 if column == "timestamp" else np.int32)
    if len(u) > 1 and (np.diff(u) < 0).any():  # the format promises sorting; do not rely on it
        order = np.argsort(u, kind="stable")
        u, items = u[order], items[order]
    starts = np.searchsorted(u, user_index, side="left")
    lengths = np.searchsorted(u, user_index, side="right") - starts
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(items[gather]))


def item_raw_ids(dataset: Any) -> np.ndarray:
    """(N + 1,) object array: raw item id by index (index 0 -> None)."""
    vocab = dataset.vocab("item")
    out = np.empty(int(dataset.n_items) + 1, dtype=object)
    out[vocab["index"].to_numpy().astype(np.int64)] = np.asarray(vocab["raw"].cast(pa.string()).to_pylist(), dtype=object)
    return out


def recommend(
    retriever: "Retriever",
    dataset: Any,
    users: Sequence[str],
    k: int,
    exclude_seen: bool = True,
    batch_size: int = 1024,
    display_fields: Sequence[str] | None = None,
    at: int | None = None,
) -> pa.Table:
    """Top-k per user as a Table (user, rank, item, score[, display fields]) in the order of
    `users`; see module doc. display_fields: [] for none, None for the dataset's defaults.
    An encoder with a time bias reads the events' timestamps and the query time `at` (seconds
    since 1970; default now, or the user's last event when that is later)."""
    import torch

    from unirec_dist.serving.display import display_table, resolve_fields

    if k <= 0:
        raise DataError(f"k must be a positive integer, got {k}")
    fields = resolve_fields(dataset, display_fields)
    clash = [f for f in fields if f in SCHEMA.names]
    if clash:
        raise DataError(f"display field {clash[0]!r} has the name of an output column ({', '.join(SCHEMA.names)})")
    index = resolve_users(dataset, users)
    raw_items = item_raw_ids(dataset)
    n_items = int(dataset.n_items)
    kk = min(int(k), n_items)
    all_ids = np.zeros((len(index), kk), dtype=np.int64)
    all_scores = np.zeros((len(index), kk), dtype=np.float32)
    was_training = getattr(retriever, "training", None)
    module = cast("torch.nn.Module", retriever)    # one with a training mode is an nn.Module
    if was_training:
        module.eval()
    try:
        with torch.no_grad():
            device = _device(retriever)
            max_len = getattr(retriever, "max_len", None)
            histories = user_histories(dataset, index)
            encoder = getattr(retriever, "encoder", None)
            times = user_histories(dataset, index, "timestamp") if getattr(encoder, "uses_times", False) else None
            now = int(time.time()) if at is None else int(at)
            # batches of similar history length (less padding for the encoder); results go back
            # to the caller's order below
            lengths = pc.list_value_length(histories).to_numpy(zero_copy_only=False)
            if max_len is not None:
                lengths = np.minimum(lengths, max_len)
            order = np.argsort(-lengths, kind="stable")
            step = batch_size * max(1, QUERY_BLOCK // batch_size)
            for block in range(0, len(index), step):
                picks = [order[b:b + batch_size] for b in range(block, min(block + step, len(index)), batch_size)]
                hists = [histories.take(pa.array(rows)) for rows in picks]
                batches = []
                for rows, h in zip(picks, hists):
                    if times is None:
                        batches.append(make_seq_batch(index[rows], h, max_len).to(device))
                        continue
                    ts = times.take(pa.array(rows))
                    last_t, n_t = last_n(ts, 1)
                    query = np.full(len(rows), now, np.int64)
                    query[n_t > 0] = np.maximum(now, last_t)
                    batches.append(make_seq_batch(index[rows], h, max_len, timestamps=ts, query_times=query).to(device))
                excludes = ([make_seq_batch(index[rows], h, None).seq.to(device) for rows, h in zip(picks, hists)]
                            if exclude_seen else None)
                lists = ranked_lists(retriever, batches, excludes, n_items, kk)
                for rows, (scores, ids) in zip(picks, lists):
                    all_ids[rows] = ids.cpu().numpy()
                    all_scores[rows] = scores.float().cpu().numpy()
    finally:
        if was_training:
            module.train()
    keep = all_ids != 0  # fewer than k unseen items: a shorter list
    user_pos, rank0 = np.nonzero(keep)
    users_arr = np.asarray([str(u) for u in users], dtype=object)
    table = pa.table(
        {
            "user": pa.array(users_arr[user_pos], pa.string()),
            "rank": pa.array(rank0.astype(np.int32) + 1),
            "item": pa.array(raw_items[all_ids[keep]], pa.string()),
            "score": pa.array(all_scores[keep], pa.float32()),
        },
        schema=SCHEMA,
    )
    shown = display_table(dataset, fields)
    if shown is not None:
        # each listed item's row in the display table (items without one: nulls)
        row = np.full(n_items + 1, -1, dtype=np.int64)
        row[shown["item"].to_numpy(zero_copy_only=False).astype(np.int64)] = np.arange(shown.num_rows)
        at = row[all_ids[keep]]
        take = pa.array(at, mask=at < 0)
        for f in fields:
            table = table.append_column(pa.field(f, pa.string()), shown[f].take(take))
    log.info("top-%d for %d users: %d rows", k, len(index), table.num_rows)
    return table


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write `table` as Parquet via a temp file beside `path` and a rename: never half-written."""
    import pyarrow.parquet as pq

    return _atomic_file(path, lambda tmp: pq.write_table(table, tmp))


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write `text` via a temp file beside `path` and a rename."""
    return _atomic_file(path, lambda tmp: Path(tmp).write_text(text + "\n"))


def check_output_file(path: str | os.PathLike, overwrite: bool) -> Path:
    """Fail before any work when the output file exists (without `overwrite`) or is a directory."""
    from unirec_dist.utils.atomic import check_output_dir

    path = Path(path)
    if path.is_dir():
        raise DataError(f"output {path} is a directory; give a file name")
    return check_output_dir(path, overwrite)


def _atomic_file(path: str | os.PathLike, write) -> Path:
    from unirec_dist.utils.atomic import atomic_file

    with atomic_file(path) as tmp:
        write(tmp)
    return Path(path)
