"""Training data: users' training sequences streamed from the prepared dataset's Parquet files
into length-grouped SeqBatches, each worker reading only its own share (no per-row Python).

Each batch row holds the user's last max_len + 1 items (input positions 0..n-2 predict items
1..n-1 in one causal pass). `train_on="train+valid"` appends the validation target to each
user's sequence (every item but the test target), for a final run evaluated on test.

Units and shares. The training rows (one per user: `train.parquet`, or the part files of a
`train/` folder) are cut into *units*: row-group slices of at most `data.unit_rows` rows, known
from the Parquet footers alone. Every epoch all ranks compute the same seeded permutation of the
units and lay them end to end as one virtual order of T rows; rank r takes the contiguous rows
[r*R, (r+1)*R) with R = T // W. Shares are disjoint and equal (the last T - W*R < W rows of the
permuted order sit the epoch out: different ones each epoch), and a rank reads only the units its
range touches.

Batches. A rank's rows stream through a buffer of `data.buffer_batches * batch_size` sequences;
each buffer is sorted by (jittered) length and cut into batches whose order is shuffled with a
permutation every rank shares, so the ranks' batches at one step have similar lengths (balanced
work). Every rank yields the same N = ceil(R / batch_size) batches per epoch (one of them smaller
when batch_size does not divide R), so collectives stay in step. Rows with fewer than 2 items
(no next-item pair) are skipped; a rank that runs short reads on past its range, cyclically, to
fill its N batches (a few rows then appear twice in that epoch).

Memory per worker: one buffer of sequences, one row group of the train files (and of
the valid file or parts for train+valid), the Parquet footers and the (n_items,) item counts
(read from the `item_counts.parquet` prepare writes; counted in one pass over the split for a
dataset prepared before it existed); never the whole dataset. Below `data.ingest_memory_mb` of train data (`data.ingest: auto`; or always with
`memory`) a worker reads its train rows once and keeps them instead of re-reading each epoch;
the units, and so the batches, are the same either way (tested).

Data position: `set_epoch(e)` then `skip(n)` start the next iteration at batch n of epoch e
(checkpoint resume); skipped batches are re-derived from the data but no tensors are built.

Lookups (TorchRec's train pipeline, `distributed.train_pipeline: sparse_dist`). With a
`Lookups`, each batch also carries every id its training step looks up (SeqBatch.item_lookup,
user_lookup) and the retrieval loss's uniform negatives, drawn here from a generator seeded by
(seed, epoch, batch, rank) instead of in the step, so a resumed run draws the same ones. Extra
memory: the batch's (P, K) negative ids and their distinct values, and while drawing, a bool
mask over the catalogue when it has at most 8x as many rows as draws (else a sort).

Fine-tuning's user subsets are in-memory `TrainSequences` (`MemorySource`), batched by the same
code.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from unirec_dist.data.batch import ITEM_KEY, USER_KEY, SeqBatch
from unirec_dist.data.dataset import PreparedDataset, split_files
from unirec_dist.errors import ConfigError, DataError

log = logging.getLogger(__name__)

REQUIRED = ("valid", "items")   # besides train: tables as a file or a folder of part files
INGEST_MODES = ("auto", "memory", "stream")


def train_files(root: str | os.PathLike) -> list[Path]:
    """The training part files of a prepared dataset: `train/*.parquet` (sorted by name) or
    `train.parquet`. Raises DataError naming what is missing."""
    return split_files(root, "train")


def open_parquet(path: Path, columns: tuple[str, ...] = ()) -> pq.ParquetFile:
    """A Parquet file's footer (no data read), with `columns` checked; one DataError line otherwise."""
    try:
        f = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable Parquet file ({' '.join(str(e).split())[:160]})") from None
    names = f.schema_arrow.names
    for col in columns:
        if col not in names:
            raise DataError(f"{path}: missing column {col!r}")
    return f


def open_prepared(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """Check a prepared dataset dir for training (PreparedDataset.open's checks: exists, manifest
    readable, format version supported; plus the files training reads, down to every train part
    file's Parquet footer) and return (path, manifest). Raises DataError with one line otherwise.
    Cheap (footers only), so the driver runs it before any worker starts."""
    ds = PreparedDataset.open(path)
    for name in REQUIRED:
        split_files(ds.root, name)
    for f in train_files(ds.root):
        open_parquet(f, ("user", "items"))
    for f in split_files(ds.root, "valid"):
        open_parquet(f, ("user", "history", "targets"))
    stored_item_counts(ds.root, ds.manifest, "train", int(ds.manifest["vocab_sizes"]["item"]))
    return ds.root, ds.manifest


def check_times(root: Path, manifest: dict[str, Any]) -> None:
    """A dataset an encoder with a time bias can train and evaluate on: real event times (not
    split.order: row) in train and in valid/test (history_timestamps, target_timestamps)."""
    order = manifest.get("config", {}).get("split", {}).get("order", "time")
    if order != "time":
        raise ConfigError(f"model.encoder.time_bias: {root} has no event times (prepared with split.order: {order}); "
                          "set model.encoder.time_bias=false")
    for name, cols in (("train", ("timestamps",)), ("valid", ("history_timestamps", "target_timestamps"))):
        for f in (train_files(root) if name == "train" else split_files(root, name)):
            missing = [c for c in cols if c not in open_parquet(f).schema_arrow.names]
            if missing:
                raise ConfigError(f"model.encoder.time_bias: {f} has no {missing[0]!r} column (a dataset prepared "
                                  "without timestamps, or by an older version: run `unirec prepare` again)")


def stored_item_counts(root: Path, manifest: dict[str, Any], train_on: str, n_items: int) -> np.ndarray | None:
    """(n_items,) training frequency of every item id as `prepare` wrote it (the manifest's
    `item_counts` file, its sha256 checked; row 0 = padding, 0), or None for a dataset prepared
    before prepare wrote it. Raises DataError with one line if the file is missing or altered."""
    entry = manifest.get("item_counts")
    if entry is None:
        return None
    path = root / entry["file"]
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the item counts the manifest lists ({e.strerror}); "
                        "re-run prepare") from None
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise DataError(f"{path}: sha256 differs from the manifest's (file changed after prepare); re-run prepare")
    t = pq.read_table(pa.BufferReader(data))
    col = "train_valid" if train_on == "train+valid" else "train"
    if t.num_rows != n_items - 1 or col not in t.column_names:
        raise DataError(f"{path}: {t.num_rows} rows for {n_items - 1} items (or no {col!r} column); re-run prepare")
    out = np.zeros(n_items, np.int64)
    out[1:] = t[col].to_numpy()
    return out


def _flat(lists: pa.ChunkedArray | pa.Array, dtype) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(dtype)
    return values, lengths


def _offsets(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


@dataclass
class TrainSequences:
    """Training sequences, flat: users (U,), values (T,), offsets (U + 1,), ratings (T,) or None,
    timestamps (T,) int64 or None (read only for an encoder with a time bias)."""

    users: np.ndarray
    values: np.ndarray
    offsets: np.ndarray
    ratings: np.ndarray | None = None
    timestamps: np.ndarray | None = None

    @cached_property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.users)

    def item_counts(self, n_items: int) -> np.ndarray:
        """(n_items,) frequency of every item id (row 0 = padding, 0)."""
        c = np.bincount(self.values, minlength=n_items)[:n_items].astype(np.int64)
        c[0] = 0
        return c

    def take(self, rows: np.ndarray) -> "TrainSequences":
        """The sequences at `rows` (whole histories), in that order."""
        lengths = self.lengths[rows]
        idx = np.repeat(self.offsets[rows] - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
        return TrainSequences(users=self.users[rows], values=self.values[idx], offsets=_offsets(lengths),
                              ratings=None if self.ratings is None else self.ratings[idx],
                              timestamps=None if self.timestamps is None else self.timestamps[idx])

    def trainable(self) -> "TrainSequences":
        """Without the rows of fewer than 2 items (no (input, next item) pair)."""
        keep = self.lengths >= 2
        return self if keep.all() else self.take(np.flatnonzero(keep))

    @staticmethod
    def concat(parts: list["TrainSequences"]) -> "TrainSequences":
        if len(parts) == 1:
            return parts[0]
        has_r = all(p.ratings is not None for p in parts)
        has_t = all(p.timestamps is not None for p in parts)
        return TrainSequences(users=np.concatenate([p.users for p in parts]),
                              values=np.concatenate([p.values for p in parts]),
                              offsets=_offsets(np.concatenate([p.lengths for p in parts])),
                              ratings=np.concatenate([p.ratings for p in parts]) if has_r else None,
                              timestamps=np.concatenate([p.timestamps for p in parts]) if has_t else None)

    @classmethod
    def from_table(cls, train: pa.Table) -> "TrainSequences":
        """From rows of train.parquet (user, items, [ratings], [timestamps]); every row kept, in order."""
        values, lengths = _flat(train["items"], np.int64)
        ratings = _flat(train["ratings"], np.float32)[0] if "ratings" in train.column_names else None
        times = _flat(train["timestamps"], np.int64)[0] if "timestamps" in train.column_names else None
        return cls(users=train["user"].to_numpy().astype(np.int64), values=values, offsets=_offsets(lengths),
                   ratings=ratings, timestamps=times)

    @classmethod
    def from_dir(cls, path: str | os.PathLike, train_on: str = "train", with_times: bool = False) -> "TrainSequences":
        """Every trainable sequence of a prepared dataset, in memory (small data, tests, fine-tuning);
        `with_times`: with each event's timestamp (an encoder with a time bias)."""
        src = ParquetSource(path, train_on=train_on, ingest="memory", with_times=with_times)
        return cls.concat([src.read(u) for u in src.units]).trainable()


class ValidTargets:
    """The first validation target of given users, read from the row groups of `valid.parquet`
    (or of the `valid/` part files) that can hold them (row-group min/max statistics of `user`):
    memory is a few row groups, not the split."""

    def __init__(self, files: list[Path], with_ratings: bool, with_times: bool = False) -> None:
        self.files = [open_parquet(f, ("user", "targets") + (("target_timestamps",) if with_times else ()))
                      for f in files]
        self.columns = ["user", "targets"]
        if with_ratings and all("target_ratings" in f.schema_arrow.names for f in self.files):
            self.columns.append("target_ratings")
        if with_times:
            self.columns.append("target_timestamps")
        self.groups = [(fi, g) for fi, f in enumerate(self.files) for g in range(f.metadata.num_row_groups)]
        self.ranges: list[tuple[int, int]] | None = []
        for fi, g in self.groups:
            f = self.files[fi]
            st = f.metadata.row_group(g).column(f.schema_arrow.get_field_index("user")).statistics
            if st is None or not st.has_min_max:
                self.ranges = None            # no statistics: read every row group (still one at a time)
                break
            self.ranges.append((int(st.min), int(st.max)))
        # row group -> (users, first targets, their ratings or None, their timestamps or None)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]] = {}

    def _group(self, g: int):
        if g not in self._cache:
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            fi, rg = self.groups[g]
            t = self.files[fi].read_row_group(rg, columns=self.columns)
            vals, lens = _flat(t["targets"], np.int64)
            has = lens > 0
            first = (np.cumsum(lens) - lens)[has]
            rat = _flat(t["target_ratings"], np.float32)[0][first] if "target_ratings" in self.columns else None
            ts = _flat(t["target_timestamps"], np.int64)[0][first] if "target_timestamps" in self.columns else None
            self._cache[g] = (t["user"].to_numpy().astype(np.int64)[has], vals[first], rat, ts)
        return self._cache[g]

    def lookup(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(has (U,) bool, target (U,) int64, rating (U,) float32 or None, timestamp (U,) int64 or
        None) for `users`."""
        has = np.zeros(len(users), bool)
        target = np.zeros(len(users), np.int64)
        rating = None if "target_ratings" not in self.columns else np.zeros(len(users), np.float32)
        stamp = None if "target_timestamps" not in self.columns else np.zeros(len(users), np.int64)
        if len(users) == 0:
            return has, target, rating, stamp
        lo, hi = int(users.min()), int(users.max())
        groups = range(len(self.groups)) if self.ranges is None else \
            [g for g, (a, b) in enumerate(self.ranges) if a <= hi and b >= lo]
        for g in groups:
            vu, vt, vr, vs = self._group(g)
            pos = np.searchsorted(vu, users)          # each valid file is sorted by user (data/format.py)
            pos = np.minimum(pos, max(len(vu) - 1, 0))
            hit = (vu[pos] == users) if len(vu) else np.zeros(len(users), bool)
            has |= hit
            target[hit] = vt[pos[hit]]
            if rating is not None and vr is not None:
                rating[hit] = vr[pos[hit]]
            if stamp is not None and vs is not None:
                stamp[hit] = vs[pos[hit]]
        return has, target, rating, stamp


def _append_targets(seqs: TrainSequences, has: np.ndarray, target: np.ndarray,
                    rating: np.ndarray | None, stamp: np.ndarray | None = None) -> TrainSequences:
    """Each sequence with its user's validation target appended (where it has one)."""
    lengths = seqs.lengths
    new_len = lengths + has
    offsets = _offsets(new_len)
    values = np.empty(int(new_len.sum()), np.int64)
    keep_pos = np.repeat(offsets[:-1] - seqs.offsets[:-1], lengths) + np.arange(len(seqs.values))
    values[keep_pos] = seqs.values
    tail = offsets[1:][has] - 1
    values[tail] = target[has]
    ratings = None
    if seqs.ratings is not None and rating is not None:
        ratings = np.empty(len(values), np.float32)
        ratings[keep_pos] = seqs.ratings
        ratings[tail] = rating[has]
    times = None
    if seqs.timestamps is not None and stamp is not None:
        times = np.empty(len(values), np.int64)
        times[keep_pos] = seqs.timestamps
        times[tail] = stamp[has]
    return TrainSequences(users=seqs.users, values=values, offsets=offsets, ratings=ratings, timestamps=times)


@dataclass(frozen=True)
class Unit:
    """Rows [start, stop) of row group `group` of part file `file` (an index into the file list)."""

    file: int
    group: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


class ParquetSource:
    """The training rows of a prepared dataset as units (row-group slices of <= unit_rows rows).

    `read(unit)` returns that unit's trainable sequences (train+valid: with the valid target
    appended). `ingest="memory"` reads each part file once and keeps it; "stream" reads one row
    group at a time; "auto" keeps the data when its uncompressed size is under `memory_mb`.
    """

    def __init__(self, path: str | os.PathLike, train_on: str = "train", unit_rows: int = 1024,
                 ingest: str = "auto", memory_mb: float = 256.0, with_times: bool = False) -> None:
        if ingest not in INGEST_MODES:
            raise ValueError(f"ingest must be one of {INGEST_MODES}, got {ingest!r}")
        self.root = Path(path)
        self.train_on = train_on
        self.files = train_files(self.root)
        self.pq = [open_parquet(f, ("user", "items")) for f in self.files]
        self.has_ratings = all("ratings" in f.schema_arrow.names for f in self.pq)
        self.columns = ["user", "items"] + (["ratings"] if self.has_ratings else [])
        if with_times:      # an encoder with a time bias: every file must have them
            for f, pf in zip(self.files, self.pq):
                if "timestamps" not in pf.schema_arrow.names:
                    raise DataError(f"{f}: no 'timestamps' column, which model.encoder.time_bias needs")
            self.columns.append("timestamps")
        self.units: list[Unit] = []
        self.groups: list[list[int]] = []        # unit indices of each row group, in row order
        self._group_start: list[list[int]] = []  # first row of each row group in its file
        nbytes = 0
        for fi, f in enumerate(self.pq):
            md, first = f.metadata, 0
            self._group_start.append([])
            for g in range(md.num_row_groups):
                n = md.row_group(g).num_rows
                nbytes += md.row_group(g).total_byte_size
                self._group_start[fi].append(first)
                first += n
                self.groups.append(list(range(len(self.units), len(self.units) + -(-n // unit_rows))))
                self.units += [Unit(fi, g, a, min(a + unit_rows, n)) for a in range(0, n, unit_rows)]
        self.n_rows = sum(u.rows for u in self.units)
        self.in_memory = ingest == "memory" or (ingest == "auto" and nbytes <= memory_mb * 2**20)
        self.valid = (ValidTargets(split_files(self.root, "valid"), self.has_ratings, with_times)
                      if train_on == "train+valid" else None)
        self._files: dict[int, TrainSequences] = {}      # in memory: whole part files
        self._last: tuple[tuple[int, int], TrainSequences] | None = None   # streaming: the last row group

    def _group(self, fi: int, g: int) -> tuple[TrainSequences, int]:
        """(sequences holding row group g of file fi, the row group's first row in them)."""
        try:
            if self.in_memory:
                if fi not in self._files:
                    self._files[fi] = self._with_valid(TrainSequences.from_table(self.pq[fi].read(columns=self.columns)))
                return self._files[fi], self._group_start[fi][g]
            if self._last is None or self._last[0] != (fi, g):
                self._last = ((fi, g), self._with_valid(
                    TrainSequences.from_table(self.pq[fi].read_row_group(g, columns=self.columns))))
            return self._last[1], 0
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{self.files[fi]}: row group {g} unreadable ({' '.join(str(e).split())[:160]})") from None

    def _with_valid(self, seqs: TrainSequences) -> TrainSequences:
        return seqs if self.valid is None else _append_targets(seqs, *self.valid.lookup(seqs.users))

    def read(self, unit: Unit) -> TrainSequences:
        seqs, base = self._group(unit.file, unit.group)
        return seqs.take(np.arange(base + unit.start, base + unit.stop)).trainable()

    def item_counts(self, n_items: int) -> np.ndarray:
        """(n_items,) training frequency of every item id (row 0 = padding, 0): the counts `prepare`
        wrote (O(items) to read), or for a dataset prepared before it wrote them, one pass over
        the split, unit by unit (O(log) time per worker: minutes at 100M interactions)."""
        from unirec_dist.data.format import MANIFEST
        from unirec_dist.utils.jsonfile import load_json_object

        mpath = self.root / MANIFEST   # (a bare folder of train parts, as benchmarks write, has none)
        manifest = load_json_object(mpath, DataError) if mpath.is_file() else {}
        stored = stored_item_counts(self.root, manifest, self.train_on, n_items)
        if stored is not None:
            return stored
        log.warning("%s has no item counts (prepared by an older unirec_dist): counting them in one pass over "
                    "the training split; re-run prepare to skip it", self.root)
        return self.pass_item_counts(n_items)

    def pass_item_counts(self, n_items: int) -> np.ndarray:
        """item_counts by one pass over the training rows, unit by unit."""
        return sum((self.read(u).item_counts(n_items) for u in self.units), np.zeros(n_items, np.int64))


class MemorySource:
    """In-memory sequences (e.g. fine-tuning's user subset) as units of <= unit_rows rows."""

    in_memory = True

    def __init__(self, seqs: TrainSequences, unit_rows: int = 1024) -> None:
        self.seqs = seqs.trainable()
        self.has_ratings = self.seqs.ratings is not None
        n = len(self.seqs)
        self.units = [Unit(0, 0, a, min(a + unit_rows, n)) for a in range(0, n, unit_rows)]
        self.groups = [list(range(len(self.units)))]
        self.n_rows = n

    def read(self, unit: Unit) -> TrainSequences:
        return self.seqs.take(np.arange(unit.start, unit.stop))

    def item_counts(self, n_items: int) -> np.ndarray:
        return self.seqs.item_counts(n_items)


def train_source(path: str | os.PathLike, data_cfg: Any, with_times: bool = False) -> ParquetSource:
    """The training source a DataSection describes (with each event's timestamp: `with_times`)."""
    return ParquetSource(path, train_on=data_cfg.train_on, unit_rows=data_cfg.unit_rows,
                         ingest=data_cfg.ingest, memory_mb=data_cfg.ingest_memory_mb, with_times=with_times)


@dataclass(frozen=True)
class Lookups:
    """What a pipelined training batch carries besides its sequences (see the module doc):
    `num_negatives` uniform negatives per draw over item ids 1..n_rows-1, one draw per position
    (`group` 1) or per `group` positions (tasks/retrieval.py), and the user ids when `users`."""

    num_negatives: int
    group: int
    n_rows: int
    users: bool

    def draw(self, positions: int, rng: np.random.Generator) -> np.ndarray:
        """(P, K) or (ceil(P / group), K) int64 negative ids for P target positions."""
        rows = positions if self.group <= 1 else -(-positions // self.group)
        return rng.integers(1, self.n_rows, size=(rows, self.num_negatives), dtype=np.int64)


class SequenceBatches:
    """Re-iterable training batches (one pass = one epoch of this rank's share; see the module doc).

    Yields SeqBatch(users (B,), seq KJT "item" (last max_len + 1 items per row),
    extra {"ratings": (T,) float32} when the dataset has ratings, {"timestamps": (T,) int64}
    when the source reads them).
    """

    def __init__(self, source: ParquetSource | MemorySource | TrainSequences, batch_size: int, max_len: int,
                 seed: int = 0, length_grouped: bool = True, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, buffer_batches: int = 64, lookups: Lookups | None = None) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        if isinstance(source, TrainSequences):
            source = MemorySource(source)
        self.source = source
        self.batch_size, self.max_len = batch_size, max_len
        self.seed, self.length_grouped, self.shuffle = seed, length_grouped, shuffle
        self.rank, self.world_size = rank, world_size
        self.buffer_rows = max(1, buffer_batches) * batch_size
        self.rows_per_rank = source.n_rows // world_size
        if self.rows_per_rank == 0:
            raise DataError(f"{getattr(source, 'root', 'training data')}: {source.n_rows} training sequences "
                            f"cannot be shared by {world_size} workers")
        self.epoch = 0
        self._skip = 0
        self.lookups = lookups

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, n: int) -> None:
        """The next iteration starts at batch n of its epoch (resume mid-epoch)."""
        self._skip = n

    def pending(self) -> int:
        """How many batches the next iteration yields: the epoch's, minus a resume's skip."""
        return max(len(self) - self._skip, 0)

    @property
    def sampler(self) -> "SequenceBatches":
        # Lightning calls `<loader>.sampler.set_epoch(epoch)` before each epoch's iter()
        return self

    def __len__(self) -> int:
        return -(-self.rows_per_rank // self.batch_size)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """Unit indices in the epoch's order: row groups permuted, each one's units permuted but kept
        together, so a rank's contiguous share reads each row group once."""
        groups = self.source.groups
        if not self.shuffle:
            return np.array([u for g in groups for u in g], np.int64)
        rng = np.random.default_rng([self.seed, epoch])
        return np.concatenate([rng.permutation(groups[g]) for g in rng.permutation(len(groups))]).astype(np.int64)

    def _rows(self, epoch: int):
        """This rank's R trainable sequences, as TrainSequences pieces in stream order: rows
        [rank * R, (rank + 1) * R) of the epoch's order, then on past them cyclically for any
        rows skipped as too short."""
        units, order = self.source.units, self._epoch_order(epoch)
        sizes = np.array([units[i].rows for i in order], np.int64)
        ends = np.cumsum(sizes)
        lo = self.rank * self.rows_per_rank
        k = int(np.searchsorted(ends, lo, side="right"))
        first = lo - int(ends[k] - sizes[k])
        need, empty_run, j = self.rows_per_rank, 0, k
        while need > 0:
            u = units[order[j % len(order)]]
            piece = self.source.read(Unit(u.file, u.group, u.start + first, u.stop) if first else u)
            first, j = 0, j + 1
            if len(piece) == 0:
                empty_run += 1
                if empty_run > len(order):
                    raise DataError(f"{getattr(self.source, 'root', 'training data')}: no user has 2 or more "
                                    "training items")
                continue
            empty_run = 0
            if len(piece) > need:
                piece = piece.take(np.arange(need))
            need -= len(piece)
            yield piece

    def _buffers(self, epoch: int):
        """The rank's rows in buffers of buffer_rows sequences (the last one smaller)."""
        pieces: list[TrainSequences] = []
        held = 0
        for piece in self._rows(epoch):
            pieces.append(piece)
            held += len(piece)
            while held >= self.buffer_rows:
                buf = TrainSequences.concat(pieces)
                yield buf.take(np.arange(self.buffer_rows))
                rest = buf.take(np.arange(self.buffer_rows, held))
                pieces, held = ([rest] if len(rest) else []), len(rest)
        if held:
            yield TrainSequences.concat(pieces)

    def _batches(self, epoch: int):
        """(buffer, row indices of one batch in it) for the whole epoch, in order."""
        for k, buf in enumerate(self._buffers(epoch)):
            for rows in self._order(buf, epoch, k):
                yield buf, rows

    def _order(self, buf: TrainSequences, epoch: int, k: int) -> list[np.ndarray]:
        """One buffer cut into batches: length-grouped with jitter, batch order shuffled (the same
        draws on every rank: buffers are the same size everywhere)."""
        n = len(buf)
        rng = np.random.default_rng([self.seed, epoch, k])
        eff = np.minimum(buf.lengths, self.max_len + 1)
        if self.length_grouped:
            # sort by length with a +-10% random jitter, so batch composition changes per epoch
            jitter = eff * np.exp(rng.uniform(-0.1, 0.1, n)) if self.shuffle else eff
            order = np.lexsort((rng.random(n), jitter)) if self.shuffle else np.argsort(eff, kind="stable")
        else:
            order = rng.permutation(n) if self.shuffle else np.arange(n)
        batches = [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def make_batch(self, buf: TrainSequences, rows: np.ndarray, epoch: int = 0, index: int = 0) -> SeqBatch:
        """Batch `index` of `epoch`: the sequences of `rows` of `buf` (and, with
        `lookups`, its lookups and negatives)."""
        import torch
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        n = np.minimum(buf.lengths[rows], self.max_len + 1)
        starts = buf.offsets[rows + 1] - n
        idx = np.repeat(starts - (np.cumsum(n) - n), n) + np.arange(n.sum())
        values = buf.values[idx]
        seq = KeyedJaggedTensor.from_lengths_sync(
            keys=[ITEM_KEY], values=torch.from_numpy(values), lengths=torch.from_numpy(n.astype(np.int64)))
        extra = {}
        if buf.ratings is not None:
            extra["ratings"] = torch.from_numpy(buf.ratings[idx])
        if buf.timestamps is not None:
            extra["timestamps"] = torch.from_numpy(buf.timestamps[idx])
        users = torch.from_numpy(buf.users[rows])
        batch = SeqBatch(users=users, seq=seq, extra=extra)
        if self.lookups is not None:
            self._add_lookups(batch, values, n, epoch, index)
        return batch

    def _add_lookups(self, batch: SeqBatch, values: np.ndarray, n: np.ndarray, epoch: int, index: int) -> None:
        import torch
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        lk = self.lookups
        assert lk is not None
        rng = np.random.default_rng([self.seed, epoch, index, self.rank, 0x6E6567])
        negs = lk.draw(int((n - 1).clip(min=0).sum()), rng)
        if lk.n_rows <= 8 * negs.size:    # a mask over the catalogue: O(draws), no sort
            seen = np.zeros(lk.n_rows, dtype=bool)
            seen[negs.reshape(-1)] = True
            distinct = np.flatnonzero(seen)
        else:
            distinct = np.unique(negs)
        ids = np.concatenate([values, distinct])
        # one "row" per sequence, then the negatives as one more: the table's output keeps the
        # order of its input ids, which is all the step reads
        lengths = np.concatenate([n, [len(distinct)]]).astype(np.int64)
        batch.item_lookup = KeyedJaggedTensor.from_lengths_sync(
            keys=[ITEM_KEY], values=torch.from_numpy(ids), lengths=torch.from_numpy(lengths))
        batch.negatives = torch.from_numpy(negs)
        if lk.users:
            batch.user_lookup = KeyedJaggedTensor.from_lengths_sync(
                keys=[USER_KEY], values=batch.users.clone(), lengths=torch.ones_like(batch.users))

    def __iter__(self):
        # A generator: epoch and skip are taken when iteration really starts (Lightning calls
        # iter() more than once up front).
        epoch, skip = self.epoch, self._skip
        self.epoch, self._skip = self.epoch + 1, 0  # a plain re-iteration moves to the next epoch
        for i, (buf, rows) in enumerate(self._batches(epoch)):
            if i >= skip:
                yield self.make_batch(buf, rows, epoch, i)


def read_valid(path: str | os.PathLike, max_users: int | None = None, seed: int = 0,
               times: bool = False, ratings: bool = False) -> pa.Table:
    """The valid split's queries with at least one target (user, history, targets; plus
    history_timestamps/target_timestamps with `times` and target_ratings with `ratings`, where
    the files have them), in user order; with `max_users`, a fixed random subset of them.

    Read one row group at a time, only those columns. The subset is the one a whole-table read
    would give: `max_users` sorted positions drawn by `default_rng(seed).choice` among all the
    queries of the split in file order, so it depends only on (files' rows, max_users, seed),
    not on the layout (one file or part files) nor on the rank (every rank picks the same
    queries: validation is collective). Choosing it reads only the `targets` column (to count
    the queries of each row group); then only the row groups holding a chosen query are read in
    full and the chosen rows taken. Memory: the subset, one row group, and the draw (numpy's
    `choice` without replacement holds a permutation of all queries, 8 bytes each, when
    max_users is over 1/50 of them)."""
    cols = ["user", "history", "targets"]
    paths = split_files(path, "valid")
    files = [open_parquet(f, tuple(cols)) for f in paths]
    names = set.intersection(*(set(f.schema_arrow.names) for f in files))
    if times and {"history_timestamps", "target_timestamps"} <= names:
        cols += ["history_timestamps", "target_timestamps"]
    if ratings and "target_ratings" in names:
        cols.append("target_ratings")
    groups = [(i, g) for i, f in enumerate(files) for g in range(f.metadata.num_row_groups)]

    def queries(i: int, g: int, columns: list[str]) -> pa.Table:
        try:
            t = files[i].read_row_group(g, columns=columns)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{paths[i]}: row group {g} is not readable ({' '.join(str(e).split())[:160]})") from None
        return t.filter(pc.greater(pc.list_value_length(t["targets"]), 0))

    chosen: list[np.ndarray | None] = [None] * len(groups)   # per row group: local query positions
    if max_users is not None:
        counts = np.array([queries(i, g, ["targets"]).num_rows for i, g in groups], dtype=np.int64)
        total = int(counts.sum())
        if total > max_users:
            picks = np.sort(np.random.default_rng(seed).choice(total, max_users, replace=False))
            starts = np.concatenate([[0], np.cumsum(counts)])
            cut = np.searchsorted(picks, starts)
            chosen = [picks[cut[i]:cut[i + 1]] - starts[i] for i in range(len(groups))]
    parts = []
    for (i, g), local in zip(groups, chosen):
        if local is None:
            parts.append(queries(i, g, cols))
        elif len(local):
            parts.append(queries(i, g, cols).take(local))
    if not parts:
        return files[0].schema_arrow.empty_table().select(cols)
    return pa.concat_tables(parts)
