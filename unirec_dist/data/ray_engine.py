"""`prepare --engine ray`: the Arrow engine's steps on Ray, with no per-interaction data on the
driver.

What runs where:
  Ray Data, per block: reading the files (one task per source file, in the Arrow engine's file
    order, each streaming its file's record batches in order: `_read`, which says why not
    ray.data.read_parquet), `select_columns` (typing and validation), the null counts and
    `drop_missing`, `order_keys` (each row's position in the source, a `row` column: blocks come
    out in source order, `preserve_order`, and are numbered from their row counts; it orders
    timestamp ties as the Arrow engine's stable sort does).
  Ray tasks on those blocks (no Ray Data shuffle: each of its aggregations or groupbys is a
    whole shuffle with per-operator scheduling, which made this engine 50-80x slower than the
    Arrow one; bench/results/scale_data.md):
    - the sorted distinct user/item values: per block, then merged in a tree of tasks;
    - one hash partition: each block encodes its ids (`encode_ids`) and cuts itself into
      ceil(rows / ROWS_PER_PARTITION) user-id ranges; each partition is one task that runs the
      Arrow engine's `sort_rows` + `drop_duplicates` and the rating filter;
    - the iterated k-core on compact arrays: every round, tasks count the rows per user and per
      item id alive under the last round's masks (bool per id), a tree of tasks sums them and one
      task gives the round's verdict and next masks; the rows are not rewritten until the end;
    - per partition, at the end: the k-core masks applied, ids compacted, `sort_rows`, the splits
      (`split_user_tables`, on partition-local user ids), the ordering counts and the items'
      training counts, and its own part files interactions/, train/, valid/, test/
      `part-NNNNN.parquet` (NNNNN = the partition: user ranges ascend with it, so the parts in
      name order are sorted by user);
    - one task for the side files (`_side_files`): the final vocabularies, the item/user feature
      tables, vocab/*.parquet, items.parquet, ITEM_COUNTS (the partitions' item counts summed).
  Ray Data, temporal protocol only: the cut points (a distributed sort of the timestamps; a task
    reads the quantile rows out of their blocks).
What each stage holds in memory (bytes per entry):
  - the driver: O(files + blocks + partitions) only, never a vocabulary: the source's file
    list (a path each, plus a Parquet folder's schema), the block row counts and null
    statistics (one row per block), one stats row per partition, the vocabulary sizes and each
    k-core round's verdict (two scalars), the manifest's entries; plus the source's item/user
    tables read from their files (one row per raw item/user of those input files). The
    vocabularies, counts, masks and maps below are Ray objects passed by reference to the tasks
    (tests/unit/test_prepare_ray.py spies every `ray.get`). MovieLens and RecBole sources are the
    exception: their files are parsed on the driver (data/sources.py `load_source`) and handed
    to Ray as Arrow blocks.
  - the object store, O(vocabulary): the sorted user and item vocabularies (raw values: 8 bytes
    per integer id, or the string bytes + 4 bytes of offset), each k-core round's per-user and
    per-item counts (8 bytes per entry) and masks (1 byte per entry), the compaction maps old ->
    new id (4 bytes per entry); O(interactions): the blocks and the partitions' rows (about 45
    bytes per interaction with the order columns) until the partition tasks have written them.
  - one task, O(vocabulary): the k-core verdict and compaction tasks hold a round's counts (16
    bytes per user + 16 per item with their masks); an encoding task the two vocabularies; a
    partition's final task its maps (4 bytes per user and per item) beside its rows; the side-file
    task the vocabularies, final counts and vocab tables (about 40 bytes per user and per item
    with integer ids: values 8, counts 8, the vocab table's string and index ~16, the hash's
    copy ~12) and ITEM_COUNTS (24 bytes per item). O(ROWS_PER_PARTITION): a partition's task.
The part files are written by Ray tasks into the output's temp directory, so on a multi-node
cluster the output must be on storage every node sees. Content is the Arrow engine's
(tests/unit/test_prepare_ray.py checks it table by table).
"""
from __future__ import annotations

import dataclasses
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unirec_dist.config.dataset import DatasetConfig
from unirec_dist.data import features as F
from unirec_dist.data import prepare as P
from unirec_dist.data.sources import (
    READ_ERRORS,
    SourceTables,
    _file_entry,
    check_file,
    csv_read_options,
    detect_format,
    load_source,
    read_error,
    read_table,
    warn_numeric_header,
)
from unirec_dist.errors import DataError, UnirecError

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

# interactions per user partition: one task holds a partition's rows while it sorts and splits
# them, so this bounds a worker's memory whatever the log's size
ROWS_PER_PARTITION = 2_000_000


# Ray Data appends its retry advice to the message of an error raised by a generator task
# ("\nFailed to apply UDF transform after 1/1 attempts ..."); UnirecError's one-line constructor
# folds it in when Ray rebuilds the error on the driver
_RAY_RETRY_NOTE = re.compile(r"\s+Failed to [^\n]*? after \d+/\d+ attempts \(total backoff.*$")


def _unwrap(e: BaseException) -> BaseException | None:
    """The UnirecError raised inside a Ray task, if any.

    Ray Data re-raises user-code errors as RayTaskError(UserCodeException) that keep only the
    remote traceback's text, so the error is rebuilt from its last line
    (`unirec_dist.errors.DataError: <message>`; messages are one line by construction).
    """
    from unirec_dist import errors

    seen = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        # a RayTaskError that Ray made a subclass of the task's error class carries the whole
        # remote traceback as its message: skipped for its `cause`, or rebuilt below
        if isinstance(x, UnirecError) and "\n" not in str(x).strip():
            x.args = (_RAY_RETRY_NOTE.sub("", str(x)),)
            return x
        stack.extend([getattr(x, "cause", None), x.__cause__, x.__context__])
    found = re.findall(r"unirec_dist\.errors\.(\w+): (.*)", str(e))
    if found:
        cls = getattr(errors, found[-1][0], None)
        if isinstance(cls, type) and issubclass(cls, UnirecError):
            return cls(found[-1][1].strip())
    return None


def _init_ray(address: str | None) -> bool:
    from unirec_dist.utils.ray_cluster import init_ray

    kw = dict(log_to_driver=False, logging_level=logging.WARNING)
    if address:
        return init_ray(address, **kw)
    return init_ray(None, num_cpus=2, **kw)


def _read_file(batch: pa.Table, spec: dict) -> Iterator[pa.Table]:
    """Ray Data map over the source's file list, one file a call: that file's rows in source
    order (Parquet: row group by row group, each in row order), streamed in record batches."""
    import pyarrow.csv as pacsv
    import pyarrow.dataset as pads
    import pyarrow.json as pajson

    kind = spec["kind"]
    for path in batch["path"].to_pylist():
        try:
            if kind == "parquet":
                # one file of pq.ParquetDataset(root) with that dataset's schema and partitioning:
                # the columns and types the Arrow engine's pq.read_table gives; the scan is ordered
                reader = pads.dataset(path, format="parquet", schema=spec["schema"],
                                      partitioning=spec["partitioning"],
                                      partition_base_dir=spec["root"]).to_batches()
            elif kind in ("csv", "tsv"):
                reader = pacsv.open_csv(path, read_options=csv_read_options(spec["column_names"]),
                                        parse_options=pacsv.ParseOptions(delimiter=spec["delimiter"]),
                                        convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
            else:
                reader = pajson.open_json(path)
            for b in reader:
                yield pa.Table.from_batches([b])
        except READ_ERRORS as e:
            raise read_error(path, "interactions", kind, e) from None


def _read(cfg: DatasetConfig):
    """(ray Dataset of raw interactions, SourceTables with items/users read on the driver).

    The interactions come out in source order, so that `_number_rows` can give each row its
    position in the source (file in the Arrow engine's order, row group, row): one Ray Data task
    per file, in that order, with `preserve_order` (set by run_ray). Not ray.data.read_parquet:
    Ray 2.60 bin-packs the row groups of several files into one read task (OnlineBinPacker, 128
    MiB bins) and the blocks then come out in bin order, not file order, which misplaced ties
    between files at 100 part files (bench/results/scale_data.md). The cost: a single file is
    read by one task (split a big log into part files to read it in parallel); the driver holds
    the file list, O(files)."""
    import ray.data

    s = cfg.source
    if s.kind != "table":
        src = P_load_source(cfg)
        return ray.data.from_arrow(src.interactions), src
    assert s.interactions is not None, "source.kind table without source.interactions"   # refused by SourceConfig.validate
    p = check_file(s.interactions, "interactions")
    fmt = detect_format(p, s.format)
    spec: dict = {"kind": fmt}
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:   # the files pq.read_table (the Arrow engine) reads, in its order
            pds = pq.ParquetDataset(p)
        except READ_ERRORS as e:
            raise read_error(p, "interactions", fmt, e) from None
        paths = list(pds.files)
        if not paths:   # what the Arrow engine says of the empty table it reads
            raise DataError(f"interactions file {p} has a header but no rows")
        spec.update(schema=pds.schema, partitioning=pds.partitioning, root=str(p) if p.is_dir() else None)
    else:
        paths = [str(p)]
    if fmt in ("csv", "tsv"):
        import pyarrow.csv as pacsv

        delim = s.delimiter or ("\t" if fmt == "tsv" else ",")
        spec.update(delimiter=delim, column_names=None if s.header else s.column_names)
        if s.header:   # the header row alone, from a streaming reader's first block
            try:
                names = pacsv.open_csv(p, parse_options=pacsv.ParseOptions(delimiter=delim)).schema.names
            except READ_ERRORS as e:
                raise read_error(p, "interactions", fmt, e) from None
            warn_numeric_header(names, str(p))
    ds = ray.data.from_items([{"path": f} for f in paths], override_num_blocks=max(1, len(paths)))
    ds = ds.map_batches(_read_file, fn_kwargs={"spec": spec}, batch_size=1, batch_format="pyarrow")
    items = read_table(s.items, "items", s.format, s.delimiter) if s.items else None
    users = read_table(s.users, "users", s.format, s.delimiter) if s.users else None
    files = [_file_entry("interactions", p)]
    where = {"interactions": str(p)}
    for role in ("items", "users"):
        if getattr(s, role):
            files.append(_file_entry(role, Path(getattr(s, role))))
            where[role] = str(getattr(s, role))
    return ds, SourceTables(pa.table({}), items, users, files, where, kind="table")


def P_load_source(cfg: DatasetConfig) -> SourceTables:
    return load_source(cfg)


def _collect(ds) -> pa.Table:
    import ray

    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="default")


# per-block functions (module level so Ray pickles them by reference)
def _select_block(t: pa.Table, cfg: DatasetConfig, where: str) -> pa.Table:
    return P.select_columns(t, cfg, where, check_all_null=False)


def _null_stats(t: pa.Table) -> pa.Table:
    uv, iv = pc.is_valid(t["user"]), pc.is_valid(t["item"])
    ids = pc.and_(uv, iv)
    ts_null = pc.and_(ids, pc.is_null(t["timestamp"]))
    s = lambda m: pc.sum(m.cast(pa.int64())).as_py() or 0  # noqa: E731
    mm = pc.min_max(t["timestamp"].filter(ids))
    return pa.table({"rows": [t.num_rows], "user_valid": [s(uv)], "item_valid": [s(iv)],
                     "null_ids": [t.num_rows - s(ids)], "null_ts": [s(ts_null)],
                     "ts_min": pa.array([mm["min"].as_py()], pa.int64()),
                     "ts_max": pa.array([mm["max"].as_py()], pa.int64())})


def _block_rows(refs: list) -> list[int]:
    """The row count of each block (counted where the blocks are)."""
    import ray

    @ray.remote
    def num_rows(t: pa.Table) -> int:
        return t.num_rows

    return ray.get([num_rows.remote(r) for r in refs])


def _number_rows(ds, split) -> ray.data.Dataset:
    """`order_keys` on every block with its global row offset (blocks in source order: `_read`)."""
    import ray

    @ray.remote
    def keys(t: pa.Table, row0: int) -> pa.Table:
        return P.order_keys(t, split, row0=row0, keep_row=True)

    refs = ds.to_arrow_refs()                       # in order: the dataset was read preserving it
    sizes = _block_rows(refs)
    offsets = np.r_[0, np.cumsum(sizes)[:-1]].astype(int)
    return ray.data.from_arrow_refs([keys.remote(r, int(o)) for r, o in zip(refs, offsets)])


def _drop_block(t: pa.Table) -> pa.Table:
    return P.drop_missing(t)[0]


def _get(x):
    """An argument that may have been put in the object store once (vocabularies, counts)."""
    import ray

    return ray.get(x) if isinstance(x, ray.ObjectRef) else x


def _remote(fn, **opts):
    import ray

    return ray.remote(**opts)(fn) if opts else ray.remote(fn)


def _tree(merge, refs: list, fan: int = 8):
    """One ref: `refs` reduced by the remote `merge(*chunk)` in a tree of fan-in `fan` (no
    driver round trip between levels, and at most `fan` inputs held by one task)."""
    while len(refs) > 1:
        refs = [merge.remote(*refs[i:i + fan]) for i in range(0, len(refs), fan)]
    return refs[0]


def _uniques(*tables: pa.Table) -> tuple[pa.Array, pa.Array]:
    return (P.sorted_unique([t["user"] for t in tables]), P.sorted_unique([t["item"] for t in tables]))


def _merge_uniques(*pairs: tuple[pa.Array, pa.Array]) -> tuple[pa.Array, pa.Array]:
    return P.sorted_unique([p[0] for p in pairs]), P.sorted_unique([p[1] for p in pairs])


def _vocab_sizes(pair: tuple[pa.Array, pa.Array]) -> tuple[pa.Array, pa.Array, int, int]:
    """The merged (user, item) vocabularies as two objects, and their sizes (all the driver gets)."""
    return pair[0], pair[1], len(pair[0]), len(pair[1])


def _partition_block(t: pa.Table, uv, iv, n_parts: int):
    """Encode one block's ids and cut it into the n_parts user ranges (partition p holds the
    encoded users with (id - 1) * n_parts // n_users == p): one table per partition."""
    uv, iv = _get(uv), _get(iv)
    u = P.encode_ids(t["user"], uv)
    t = t.set_column(0, "user", u).set_column(1, "item", P.encode_ids(t["item"], iv))
    part = (u.to_numpy(zero_copy_only=False).astype(np.int64) - 1) * n_parts // max(len(uv), 1)
    order = np.argsort(part, kind="stable")
    ends = np.searchsorted(part[order], np.arange(n_parts + 1))
    pieces = [t.take(pa.array(order[ends[p]:ends[p + 1]])) for p in range(n_parts)]
    return pieces[0] if n_parts == 1 else tuple(pieces)


def _dedup_part(min_rating: float | None, *pieces: pa.Table) -> tuple[pa.Table, tuple[int, int]]:
    """One user partition's rows, sorted and de-duplicated, then rating-filtered; and the row
    counts after each of the two."""
    t = pa.concat_tables(pieces, promote_options="default")
    if t.num_rows == 0:
        return t, (0, 0)
    t = P.drop_duplicates(P.sort_rows(t))[0]
    n = t.num_rows
    if min_rating is not None:
        t = P.rating_filter(t, min_rating)[0]
    return t, (n, t.num_rows)


def _alive(t: pa.Table, ua, ia) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(user ids, item ids, row mask or None) of a partition under k-core masks (None: all alive)."""
    u = F.as_array(t["user"]).to_numpy(zero_copy_only=False)
    i = F.as_array(t["item"]).to_numpy(zero_copy_only=False)
    if ua is None:
        return u, i, None
    ua, ia = _get(ua), _get(ia)
    return u, i, ua[u] & ia[i]


def _count_parts(n_users: int, n_items: int, ua, ia, *parts: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Rows per user id 0..n_users and per item id 0..n_items in `parts`, counting only the rows
    alive under the k-core masks `ua`, `ia` (bool per user/item; None: every row)."""
    uc, ic = np.zeros(n_users + 1, np.int64), np.zeros(n_items + 1, np.int64)
    for t in parts:
        u, i, keep = _alive(t, ua, ia)
        if keep is not None:
            u, i = u[keep], i[keep]
        uc += np.bincount(u, minlength=n_users + 1)
        ic += np.bincount(i, minlength=n_items + 1)
    return uc, ic


def _sum_pairs(*pairs: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.add.reduce([p[0] for p in pairs]), np.add.reduce([p[1] for p in pairs])


def _kcore_step(counts: tuple[np.ndarray, np.ndarray], user_core: int, item_core: int
                ) -> tuple[int, bool, np.ndarray, np.ndarray]:
    """One k-core round's verdict from its summed (per-user, per-item) counts: (rows alive,
    whether no user/item is below its core, the next round's masks: bool per user/item id)."""
    uc, ic = counts
    done = not ((0 < uc) & (uc < user_core)).any() and not ((0 < ic) & (ic < item_core)).any()
    return int(uc.sum()), done, uc >= user_core, ic >= item_core


def _compaction(counts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(old -> new user id, old -> new item id, users left, items left) from the final counts."""
    uc, ic = counts
    upresent, ipresent = np.flatnonzero(uc[1:]) + 1, np.flatnonzero(ic[1:]) + 1
    return (P.compact_mapping(upresent, len(uc) - 1), P.compact_mapping(ipresent, len(ic) - 1),
            len(upresent), len(ipresent))


def _keep_alive(t: pa.Table, ua, ia) -> pa.Table:
    keep = _alive(t, ua, ia)[2]
    return t if keep is None else t.filter(pa.array(keep))


def _write(t: pa.Table, path: Path, row_group: int | None) -> None:
    import pyarrow.parquet as pq

    pq.write_table(t, path, use_dictionary=False, row_group_size=row_group)


COUNTS_DIR = "_item_counts"   # per-partition item counts, summed into ITEM_COUNTS, then removed


def _finish_part(t: pa.Table, part: int, ua, ia, umap, imap, sp, cuts: tuple[int, int] | None, out: str,
                 n_items: int) -> dict | None:
    """One user partition: drop the rows the k-core removed, compact ids, sort, split, write its
    part files and its items' training counts (COUNTS_DIR, the items it has only); returns its
    row counts and `order_counts` (None when the k-core left it no rows: no files)."""
    t = _keep_alive(t, ua, ia)
    if t.num_rows == 0:
        return None
    umap, imap = _get(umap), _get(imap)
    u = umap[F.as_array(t["user"]).to_numpy(zero_copy_only=False)]
    t = t.set_column(0, "user", pa.array(u, pa.int32()))
    t = t.set_column(1, "item", pa.array(imap[F.as_array(t["item"]).to_numpy(zero_copy_only=False)], pa.int32()))
    t = P.drop_order_columns(P.sort_rows(t))
    # the split functions index users 1..n: run them on partition-local ids, then map back
    users = F.as_array(t["user"]).to_numpy(zero_copy_only=False)
    first = np.r_[True, users[1:] != users[:-1]]
    ids = users[first]
    local = t.set_column(0, "user", pa.array(np.cumsum(first).astype(np.int32)))
    train, valid, test, cut, oc = P.split_user_tables(local, len(ids), sp, cuts)
    row = {"part": part, "order_counts": oc}
    name = f"part-{part:05d}.parquet"
    ct, cv = P.train_item_counts(train, valid, n_items)
    nz = np.flatnonzero(ct | cv)
    _write(pa.table({"item": pa.array(nz, pa.int32()), "train": ct[nz], "train_valid": cv[nz]}),
           Path(out) / COUNTS_DIR / name, None)
    for split, tbl, rg in (("interactions", t, None), ("train", train, P.SPLIT_ROW_GROUP),
                           ("valid", valid, P.SPLIT_ROW_GROUP), ("test", test, P.SPLIT_ROW_GROUP)):
        if split != "interactions":
            glob = ids[tbl["user"].to_numpy() - 1] if tbl.num_rows else np.zeros(0, np.int32)
            tbl = tbl.set_column(0, "user", pa.array(glob, pa.int32()))
        _write(tbl, Path(out) / split / name, rg)
        row[split] = tbl.num_rows
    return row


def _sum_item_counts(folder: Path, n_items: int) -> pa.Table:
    """The partitions' item counts summed into one ITEM_COUNTS table (in `_side_files`' task: two
    int64 arrays per item plus one partition's file at a time), then their folder removed."""
    import pyarrow.parquet as pq

    tot = np.zeros((2, n_items + 1), np.int64)
    for f in sorted(folder.iterdir()):
        t = pq.read_table(f)
        i = t["item"].to_numpy()
        tot[0, i] += t["train"].to_numpy()     # item ids are unique within one partition's file
        tot[1, i] += t["train_valid"].to_numpy()
    shutil.rmtree(folder)
    return P.item_counts_table(tot[0], tot[1])


def _side_files(uv: pa.Array, iv: pa.Array, counts: tuple[np.ndarray, np.ndarray], src: SourceTables,
                cfg: DatasetConfig, out: str) -> dict:
    """A task: the final vocabularies (the values of the ids the k-core kept), the item/user
    feature tables, vocab/*.parquet and ITEM_COUNTS written into `out` (`prepare.write_tables`);
    returns what the manifest needs of them (no table: the driver never holds a vocabulary)."""
    uc, ic = counts
    uv, iv = uv.take(pa.array(np.flatnonzero(uc[1:]))), iv.take(pa.array(np.flatnonzero(ic[1:])))
    p = P.side_tables(uv, iv, src, cfg, {}, {})
    p.item_counts = _sum_item_counts(Path(out) / COUNTS_DIR, len(iv))
    return {"written": P.write_tables(p, Path(out)), "features": p.features, "tables": p.tables}


def _temporal_cuts(ds, sp) -> tuple[int, int]:
    """`prepare.temporal_cuts` (Arrow's 'lower' quantile: the value at floor(q * (n - 1)) in sorted
    order) over a distributed sort; only the two values reach the driver."""
    import ray

    @ray.remote
    def value(t: pa.Table, i: int) -> int:
        return int(t["timestamp"][i].as_py())

    refs = ds.select_columns(["timestamp"]).sort("timestamp").to_arrow_refs()
    sizes = np.array(_block_rows(refs), np.int64)
    ends = np.cumsum(sizes)
    out = []
    for q in (1 - sp.valid_fraction - sp.test_fraction, 1 - sp.test_fraction):
        k = int(np.floor(q * (int(ends[-1]) - 1)))
        b = int(np.searchsorted(ends, k, side="right"))
        out.append(ray.get(value.remote(refs[b], k - int(ends[b] - sizes[b]))))
    return out[0], out[1]


def _clean_encode(ds, cfg: DatasetConfig, where: str, counts: dict):
    """Steps 1-7 on Ray: (refs of the user partitions' encoded, sorted, de-duplicated and
    rating-filtered rows, the k-core masks (refs of bool per user id / item id; None, None when
    the k-core removed nothing) that drop the rest, refs of the user/item vocabularies and of the
    final (per-user, per-item) counts)."""
    import ray

    mb = dict(batch_format="pyarrow", batch_size=None)
    # preserve_order (set by run_ray): the blocks come out in source order, so they can be numbered
    ds = ds.map_batches(_select_block, fn_kwargs={"cfg": cfg, "where": where}, **mb).materialize()
    st = _collect(ds.map_batches(_null_stats, **mb))
    tot = {k: int(pc.sum(st[k]).as_py() or 0) for k in st.column_names} if st.num_rows else {}
    if not tot.get("rows"):
        raise DataError(f"interactions file {where} has a header but no rows")
    c = cfg.columns
    for role, key in (("user", "user_valid"), ("item", "item_valid")):
        if tot[key] == 0:
            raise DataError(f"{where}: column {getattr(c, role)!r} ({role}) is null in every row")
    counts["raw"] = tot["rows"]
    counts["dropped_null_ids"], counts["dropped_null_timestamps"] = tot["null_ids"], tot["null_ts"]
    n_ts = tot["rows"] - tot["null_ids"] - tot["null_ts"]
    lo, hi = (pc.min(st["ts_min"]).as_py(), pc.max(st["ts_max"]).as_py())
    P.check_timestamps(n_ts, lo, hi, cfg.split, where, c.timestamp)
    if n_ts == 0:
        raise DataError("no interaction has a user id, an item id and a timestamp")
    ds = _number_rows(ds, cfg.split).map_batches(_drop_block, **mb).materialize()
    f = cfg.filter
    if f.min_rating is not None and "rating" not in ds.schema().names:
        raise DataError("filter.min_rating is set but columns.rating is not configured")
    blocks = ds.to_arrow_refs()
    # From here on Ray tasks on the blocks (not Ray Data operators): the vocabularies by a tree of
    # distinct-value merges, one hash partition of the rows by user range (each block cut into
    # n_parts pieces, each partition one task), and the k-core on dense per-id count arrays, so
    # no step shuffles through Ray Data's aggregations (one shuffle per operator).
    # The vocabularies, counts and masks stay in the object store as refs passed to tasks: the
    # driver gets only their sizes and each k-core round's verdict.
    vocab = _tree(_remote(_merge_uniques), [_remote(_uniques).remote(b) for b in blocks])
    uv, iv, nu_ref, ni_ref = _remote(_vocab_sizes, num_returns=4).remote(vocab)
    n_users, n_items = ray.get([nu_ref, ni_ref])
    n_parts = max(1, -(-n_ts // ROWS_PER_PARTITION))
    split = _remote(_partition_block, num_returns=n_parts)
    pieces = [split.remote(b, uv, iv, n_parts) for b in blocks]
    if n_parts == 1:
        pieces = [[p] for p in pieces]
    dedup = _remote(_dedup_part, num_returns=2)
    parts, sizes = zip(*[dedup.remote(f.min_rating, *[bp[p] for bp in pieces]) for p in range(n_parts)])
    del pieces, blocks, ds
    sizes = ray.get(list(sizes))
    n, n_rated = sum(s[0] for s in sizes), sum(s[1] for s in sizes)
    counts["dropped_duplicates"] = n_ts - n
    counts["dropped_rating_filter"] = n - n_rated
    if n_rated == 0:
        raise DataError(f"filter.min_rating={f.min_rating} leaves no interactions")
    count = _remote(_count_parts)
    merge = _remote(_sum_pairs)
    step = _remote(_kcore_step, num_returns=4)
    masks: tuple = (None, None)
    rounds = 0
    while True:   # the iterated k-core: each round counts the rows alive under the last masks
        ids = _tree(merge, [count.remote(n_users, n_items, *masks, *parts[i:i + 8]) for i in range(0, len(parts), 8)])
        n_ref, done_ref, ua, ia = step.remote(ids, f.user_core, f.item_core)
        n_now, done = ray.get([n_ref, done_ref])
        if n_now == 0:
            raise P._kcore_empty(f.user_core, f.item_core)
        if done:
            break
        rounds += 1
        masks = (ua, ia)
    counts["after_kcore"] = {"rows": n_now, "dropped": n_rated - n_now, "iterations": rounds}
    return list(parts), masks, uv, iv, ids


def _write_parts(parts: list, masks: tuple, uv, iv, ids, cfg: DatasetConfig, src: SourceTables, out: Path
                 ) -> tuple[dict, dict, dict, dict | None, dict, int, int]:
    """Steps 7-9 on Ray: compact ids, split and write every partition's part files, and the side
    files (vocabularies, feature tables, ITEM_COUNTS: `_side_files`) into `out`. `uv`, `iv`, `ids`
    are refs (vocabularies, final counts). Returns (parts, part schemas, order counts, temporal
    cuts or None, `_side_files`' result, users, items)."""
    import pyarrow.parquet as pq
    import ray
    import ray.data

    umap, imap, nu_ref, ni_ref = _remote(_compaction, num_returns=4).remote(ids)
    n_users, n_items = ray.get([nu_ref, ni_ref])
    sp = cfg.split
    cuts = None
    if sp.protocol == "temporal":
        keep = _remote(_keep_alive)
        cuts = _temporal_cuts(ray.data.from_arrow_refs([keep.remote(t, *masks) for t in parts]), sp)
    for name in (*P.SPLIT_TABLES, COUNTS_DIR):
        (out / name).mkdir()
    finish = _remote(_finish_part)
    rows = [r for r in ray.get([finish.remote(t, k, *masks, umap, imap, sp, cuts, str(out), n_items)
                                for k, t in enumerate(parts)]) if r is not None]
    parts_out = {name: [{"file": f"{name}/part-{r['part']:05d}.parquet", "rows": r[name]} for r in rows]
                 for name in P.SPLIT_TABLES}
    schemas = {name: pq.read_schema(out / parts_out[name][0]["file"]) for name in P.SPLIT_TABLES}
    oc: dict[str, int] = {}
    for r in rows:
        oc = P.add_order_counts(oc, r["order_counts"])
    # the source without its interactions (a MovieLens/RecBole source holds the whole log there)
    side = ray.get(_remote(_side_files).remote(uv, iv, ids, dataclasses.replace(src, interactions=pa.table({})),
                                               cfg, str(out)))
    cut = None
    if cuts is not None:
        c1, c2 = cuts
        cut = {"cut_valid": c2 if sp.valid_fraction == 0 else c1, "cut_test": c2}
    return parts_out, schemas, oc, cut, side, n_users, n_items


def run_ray(cfg: DatasetConfig, out: Path, ray_address: str | None = None) -> tuple[P.PreparedTables, SourceTables]:
    """Prepare on Ray: every table file is written into `out` (a fresh temp dir) by Ray tasks; the
    returned PreparedTables holds only the manifest's entries (`written`, parts, counts, split)."""
    try:
        import ray
        import ray.data
    except ImportError:  # pragma: no cover - ray is a pinned dependency
        raise DataError("the ray engine needs ray[data]; install the pinned stack") from None
    started = _init_ray(ray_address)
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.shuffle_strategy, ctx.execution_options.preserve_order)
    data_log = logging.getLogger("ray.data")
    saved_level = data_log.level
    try:
        ctx.enable_progress_bars = False
        ctx.execution_options.preserve_order = True
        # the sort-based shuffle: the default hash shuffle starts one aggregator actor per
        # partition (200), which costs ~10 s before any data moves on a 2-core machine
        ctx.shuffle_strategy = type(ctx.shuffle_strategy).SORT_SHUFFLE_PULL_BASED
        # Ray Data logs user-code errors itself; ours are re-raised below as one line
        data_log.setLevel(logging.CRITICAL)
        ds, src = _read(cfg)
        counts: dict = {}
        where = src.where.get("interactions", "interactions")
        blocks, masks, uv, iv, ids = _clean_encode(ds, cfg, where, counts)
        parts, schemas, oc, cuts, side, n_users, n_items = _write_parts(blocks, masks, uv, iv, ids, cfg, src, Path(out))
        counts["final"] = sum(p["rows"] for p in parts["interactions"])
        counts["users"], counts["items"] = n_users, n_items
        split = P.split_manifest(cfg, cuts, {k: sum(p["rows"] for p in parts[k]) for k in ("train", "valid", "test")},
                                 oc)
        p = P.PreparedTables(user_vocab=None, item_vocab=None, items=None, users=None, counts=counts, split=split,
                             features=side["features"], tables=side["tables"], parts=parts, part_schemas=schemas,
                             written=side["written"])
        return p, src
    except Exception as e:
        inner = _unwrap(e)
        if inner is not None and inner is not e:
            raise inner from None
        raise
    finally:
        ctx.enable_progress_bars, ctx.shuffle_strategy, ctx.execution_options.preserve_order = saved
        data_log.setLevel(saved_level)
        if started:
            from unirec_dist.utils.ray_cluster import shutdown_ray

            shutdown_ray()
