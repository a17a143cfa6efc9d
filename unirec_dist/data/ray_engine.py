"""`prepare --engine ray`: the Arrow engine's steps on Ray Data, with no per-interaction data on
the driver.

What runs where:
  on Ray workers, per block: reading the files (ray.data.read_csv/read_parquet/read_json),
    `select_columns` (typing and validation), the null counts and `drop_missing`, `order_keys`
    (each row's position in the source, a `row` column: blocks are read in order,
    `preserve_order`, and numbered from their row counts; it orders timestamp ties as the Arrow
    engine's stable sort does), `encode_ids`, the rating filter and each k-core round's filter.
  on Ray, aggregations: the distinct user/item values and, every k-core round, the rows per
    user and per item (block counts summed by `groupby("key").sum()`, users and items in one); the temporal protocol's cut points (a
    distributed sort of the timestamps; a task reads the quantile rows out of their blocks).
  on Ray, per user partition: rows are range-partitioned by encoded user id into
    ceil(rows / ROWS_PER_PARTITION) partitions (`groupby("part").map_groups`); each partition
    runs the Arrow engine's `sort_rows` + `drop_duplicates`, and at the end `sort_rows`, the
    splits (`split_user_tables`, on partition-local user ids) and the ordering counts, and writes
    its own part files interactions/, train/, valid/, test/ `part-NNNNN.parquet` (NNNNN = the
    partition: user ranges ascend with it, so the parts in name order are sorted by user).
The driver holds only what is O(vocabulary), where encoding needs it:
  - the sorted user and item vocabularies (the raw values: 8 bytes per integer id, or the string
    bytes + 4 bytes of offset), put once in the object store for the encoding tasks;
  - each k-core round's per-user and per-item counts (8 bytes per entry, plus 16 bytes per
    entry while the aggregate is read) and the compaction maps old -> new id (4 bytes per entry);
  - the item/user feature tables (data/prepare.py `entity_table`, one row per item/user).
  plus O(blocks + partitions) statistics. MovieLens and RecBole sources are the exception: their
  files are parsed on the driver (data/sources.py `load_source`) and handed to Ray as Arrow blocks.
The part files are written by Ray tasks into the output's temp directory, so on a multi-node
cluster the output must be on storage every node sees. Content is the Arrow engine's
(tests/unit/test_prepare_ray.py checks it table by table).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unirec_dist.config.dataset import DatasetConfig
from unirec_dist.data import features as F
from unirec_dist.data import prepare as P
from unirec_dist.data.sources import SourceTables, _file_entry, check_file, detect_format, read_table
from unirec_dist.errors import DataError, UnirecError

log = logging.getLogger(__name__)

# interactions per user partition: one task holds a partition's rows while it sorts and splits
# them, so this bounds a worker's memory whatever the log's size
ROWS_PER_PARTITION = 2_000_000


def _unwrap(e: BaseException) -> BaseException | None:
    """The UnirecError raised inside a Ray task, if any.

    Ray Data re-raises user-code errors as RayTaskError(UserCodeException) that keep only the
    remote traceback's text, so the error is rebuilt from its last line
    (`unirec_dist.errors.DataError: <message>`; messages are one line by construction).
    """
    import re

    from unirec_dist import errors

    seen = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, UnirecError):
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
        return init_ray(address, flag="--ray-address", **kw)
    return init_ray(None, num_cpus=2, **kw)


def _read(cfg: DatasetConfig):
    """(ray Dataset of raw interactions, SourceTables with items/users read on the driver)."""
    import ray.data

    s = cfg.source
    if s.kind != "table":
        src = P_load_source(cfg)
        return ray.data.from_arrow(src.interactions), src
    p = check_file(s.interactions, "interactions")
    fmt = detect_format(p, s.format)
    if fmt in ("csv", "tsv"):
        import pyarrow.csv as pacsv

        from unirec_dist.data.sources import csv_read_options

        delim = s.delimiter or ("\t" if fmt == "tsv" else ",")
        ds = ray.data.read_csv(str(p), parse_options=pacsv.ParseOptions(delimiter=delim),
                               read_options=csv_read_options(None if s.header else s.column_names),
                               convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
                               file_extensions=None)
        if s.header:   # the header row alone, from a streaming reader's first block
            from unirec_dist.data.sources import warn_numeric_header

            warn_numeric_header(pacsv.open_csv(p, parse_options=pacsv.ParseOptions(delimiter=delim)).schema.names,
                                str(p))
    elif fmt == "parquet":
        ds = ray.data.read_parquet(str(p), file_extensions=None)
    else:
        ds = ray.data.read_json(str(p), file_extensions=None)
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
    from unirec_dist.data.sources import load_source

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


def _number_rows(ds, split) -> "ray.data.Dataset":  # noqa: F821 (ray is imported inside)
    """`order_keys` on every block with its global row offset (blocks in source order)."""
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


def _encode_block(t: pa.Table, uv, iv, n_parts: int) -> pa.Table:
    uv, iv = _get(uv), _get(iv)
    u = P.encode_ids(t["user"], uv)
    t = t.set_column(0, "user", u).set_column(1, "item", P.encode_ids(t["item"], iv))
    # range partitions of the encoded user ids: partition p holds a contiguous id range
    part = (u.to_numpy(zero_copy_only=False).astype(np.int64) - 1) * n_parts // max(len(uv), 1)
    return t.append_column("part", pa.array(part))


def _dedup_group(t: pa.Table) -> pa.Table:
    # (`part` is a function of the user, so it never tells duplicates apart)
    return P.drop_duplicates(P.sort_rows(t))[0]


def _rating_block(t: pa.Table, min_rating: float) -> pa.Table:
    return P.rating_filter(t, min_rating)[0]


def _kcore_block(t: pa.Table, uc, ic, user_core: int, item_core: int) -> pa.Table:
    uc, ic = _get(uc), _get(ic)
    u = F.as_array(t["user"]).to_numpy(zero_copy_only=False)
    i = F.as_array(t["item"]).to_numpy(zero_copy_only=False)
    return t.filter(pa.array((uc[u] >= user_core) & (ic[i] >= item_core)))


def _write(t: pa.Table, path: Path, row_group: int | None) -> None:
    import pyarrow.parquet as pq

    pq.write_table(t, path, use_dictionary=False, row_group_size=row_group)


def _finish_group(t: pa.Table, umap, imap, sp, cuts: tuple[int, int] | None, out: str) -> pa.Table:
    """One user partition: compact ids, sort, split, write its part files; returns its row counts
    and `order_counts` (one row)."""
    umap, imap = _get(umap), _get(imap)
    part = int(t["part"][0].as_py())
    u = umap[F.as_array(t["user"]).to_numpy(zero_copy_only=False)]
    t = t.drop_columns(["part"]).set_column(0, "user", pa.array(u, pa.int32()))
    t = t.set_column(1, "item", pa.array(imap[F.as_array(t["item"]).to_numpy(zero_copy_only=False)], pa.int32()))
    t = P.drop_order_columns(P.sort_rows(t))
    # the split functions index users 1..n: run them on partition-local ids, then map back
    users = F.as_array(t["user"]).to_numpy(zero_copy_only=False)
    first = np.r_[True, users[1:] != users[:-1]]
    ids = users[first]
    local = t.set_column(0, "user", pa.array(np.cumsum(first).astype(np.int32)))
    train, valid, test, cut, oc = P.split_user_tables(local, len(ids), sp, cuts)
    row = {"part": [part], "order_counts": [json.dumps(oc)]}
    name = f"part-{part:05d}.parquet"
    for split, tbl, rg in (("interactions", t, None), ("train", train, P.SPLIT_ROW_GROUP),
                           ("valid", valid, P.SPLIT_ROW_GROUP), ("test", test, P.SPLIT_ROW_GROUP)):
        if split != "interactions":
            glob = ids[tbl["user"].to_numpy() - 1] if tbl.num_rows else np.zeros(0, np.int32)
            tbl = tbl.set_column(0, "user", pa.array(glob, pa.int32()))
        _write(tbl, Path(out) / split / name, rg)
        row[split] = [tbl.num_rows]
    return pa.table(row)


def _id_counts_block(t: pa.Table) -> pa.Table:
    """Rows per user id (key = id) and per item id (key = -id) in one block."""
    u, i = pc.value_counts(t["user"]), pc.value_counts(t["item"])
    keys = pa.concat_arrays([u.field("values").cast(pa.int64()), pc.negate(i.field("values").cast(pa.int64()))])
    return pa.table({"key": keys, "n": pa.concat_arrays([u.field("counts"), i.field("counts")])})


def _dense_counts(ds, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows per user id 0..n_users and per item id 0..n_items: one Ray Data aggregation (block
    counts, then a sum by id); the driver reads one row per id."""
    c = _collect(ds.map_batches(_id_counts_block, batch_format="pyarrow", batch_size=None)
                 .groupby("key").sum("n"))
    uc, ic = np.zeros(n_users + 1, np.int64), np.zeros(n_items + 1, np.int64)
    if c.num_rows:
        key = F.as_array(c["key"]).to_numpy(zero_copy_only=False)
        n = F.as_array(c["sum(n)"]).to_numpy(zero_copy_only=False)
        uc[key[key > 0]] = n[key > 0]
        ic[-key[key < 0]] = n[key < 0]
    return uc, ic


def _distinct(ds, col: str) -> pa.Array:
    """The sorted distinct values of `col` (an aggregation on Ray; one row per value reaches the driver)."""
    return P.sorted_unique(_collect(ds.select_columns([col]).groupby(col).count())[col])


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
    """Steps 1-7 on Ray: (dataset of encoded, filtered rows with a `part` column, the user/item
    vocabularies, the final per-user/per-item counts)."""
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
    uv, iv = _distinct(ds, "user"), _distinct(ds, "item")
    n_parts = max(1, -(-n_ts // ROWS_PER_PARTITION))
    ds = ds.map_batches(_encode_block, fn_kwargs={"uv": ray.put(uv), "iv": ray.put(iv), "n_parts": n_parts}, **mb)
    ds = ds.groupby("part").map_groups(_dedup_group, batch_format="pyarrow").materialize()
    n = ds.count()
    counts["dropped_duplicates"] = n_ts - n
    f = cfg.filter
    if f.min_rating is not None:
        if "rating" not in ds.schema().names:
            raise DataError("filter.min_rating is set but columns.rating is not configured")
        ds = ds.map_batches(_rating_block, fn_kwargs={"min_rating": f.min_rating}, **mb).materialize()
    n_rated = ds.count()
    counts["dropped_rating_filter"] = n - n_rated
    if n_rated == 0:
        raise DataError(f"filter.min_rating={f.min_rating} leaves no interactions")
    rounds, n_now = 0, n_rated
    while True:   # the iterated k-core: counts by aggregation, then one filter pass per round
        uc, ic = _dense_counts(ds, len(uv), len(iv))
        if not ((0 < uc) & (uc < f.user_core)).any() and not ((0 < ic) & (ic < f.item_core)).any():
            break
        rounds += 1
        ds = ds.map_batches(_kcore_block, fn_kwargs={"uc": ray.put(uc), "ic": ray.put(ic), "user_core": f.user_core,
                                                     "item_core": f.item_core}, **mb).materialize()
        n_now = ds.count()
        if n_now == 0:
            raise P._kcore_empty(f.user_core, f.item_core)
    counts["after_kcore"] = {"rows": n_now, "dropped": n_rated - n_now, "iterations": rounds}
    return ds, uv, iv, uc, ic


def _write_parts(ds, uv: pa.Array, iv: pa.Array, uc: np.ndarray, ic: np.ndarray, cfg: DatasetConfig,
                 out: Path) -> tuple[pa.Array, pa.Array, dict, dict, dict, dict | None]:
    """Steps 7-8 on Ray: compact ids, split and write every partition's part files into `out`.
    Returns (user values, item values, parts, part schemas, order counts, temporal cuts or None)."""
    import pyarrow.parquet as pq
    import ray

    upresent, ipresent = np.flatnonzero(uc[1:]) + 1, np.flatnonzero(ic[1:]) + 1
    umap, imap = P.compact_mapping(upresent, len(uv)), P.compact_mapping(ipresent, len(iv))
    sp = cfg.split
    cuts = _temporal_cuts(ds, sp) if sp.protocol == "temporal" else None
    for name in P.SPLIT_TABLES:
        (out / name).mkdir()
    st = _collect(ds.groupby("part").map_groups(
        _finish_group, batch_format="pyarrow",
        fn_kwargs={"umap": ray.put(umap), "imap": ray.put(imap), "sp": sp, "cuts": cuts, "out": str(out)}))
    st = st.sort_by("part")
    parts = {name: [{"file": f"{name}/part-{p:05d}.parquet", "rows": r}
                    for p, r in zip(st["part"].to_pylist(), st[name].to_pylist())] for name in P.SPLIT_TABLES}
    schemas = {name: pq.read_schema(out / parts[name][0]["file"]) for name in P.SPLIT_TABLES}
    oc: dict[str, int] = {}
    for s in st["order_counts"].to_pylist():
        oc = P.add_order_counts(oc, json.loads(s))
    cut = None
    if cuts is not None:
        c1, c2 = cuts
        cut = {"cut_valid": c2 if sp.valid_fraction == 0 else c1, "cut_test": c2}
    return uv.take(pa.array(upresent - 1)), iv.take(pa.array(ipresent - 1)), parts, schemas, oc, cut


def run_ray(cfg: DatasetConfig, out: Path, ray_address: str | None = None) -> tuple[P.PreparedTables, SourceTables]:
    """Prepare on Ray: the part files are written into `out` (a fresh temp dir); the returned
    tables hold the vocabularies, feature tables and the manifest's entries, not the rows."""
    try:
        import ray
        import ray.data
    except ImportError:  # pragma: no cover - ray is a pinned dependency
        raise DataError("--engine ray needs ray[data]; install the pinned stack") from None
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
        ds, uv, iv, uc, ic = _clean_encode(ds, cfg, where, counts)
        uv, iv, parts, schemas, oc, cuts = _write_parts(ds, uv, iv, uc, ic, cfg, Path(out))
        counts["final"] = sum(p["rows"] for p in parts["interactions"])
        counts["users"], counts["items"] = len(uv), len(iv)
        split = P.split_manifest(cfg, cuts, {k: sum(p["rows"] for p in parts[k]) for k in ("train", "valid", "test")},
                                 oc)
        p = P.side_tables(uv, iv, src, cfg, counts, split)
        p.parts, p.part_schemas = parts, schemas
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
