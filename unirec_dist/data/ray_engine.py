"""`prepare --engine ray`: the same steps as the Arrow engine, on Ray Data.

What runs where (honestly):
  on Ray workers, per block, in parallel:
    reading the files (ray.data.read_csv/read_parquet/read_json), `select_columns` (typing and
    validation), the null counts and `drop_missing`, the distinct user/item values of each block,
    `encode_ids`, the rating filter, the per-block user/item counts of every k-core round and
    the k-core filter, and the re-indexing to contiguous ids (`compact`).
  on Ray, per block after the typing: `order_keys` adds each row's position in the source (a
    `row` column: blocks are read in order, `preserve_order`, and numbered from their row
    counts), which breaks timestamp ties as the Arrow engine's stable sort does.
  on Ray, grouped:
    `groupby(user % n_buckets).map_groups(...)`: every user's rows meet in one group, where the
    same vectorized `sort_rows` + `drop_duplicates` of the Arrow engine run.
  on the driver:
    merging the per-block distinct values into the sorted vocabularies and summing the per-block
    k-core counts (both small: one entry per user/item); then gathering the encoded integer
    columns (about 20 bytes per interaction), one stable sort by user, and the list-column
    building, splits, item/user feature tables and writing (`prepare.finish`). MovieLens files
    are parsed on the driver (they are small) and handed to Ray as Arrow blocks.
So the driver must hold the encoded interactions, not the raw log: a 1B-row log needs ~20 GB there.
Output is identical to the Arrow engine's (tests/unit/test_prepare_ray.py checks it).
"""
from __future__ import annotations

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

N_BUCKETS = 16


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


def _number_rows(ds, split) -> "ray.data.Dataset":  # noqa: F821 (ray is imported inside)
    """`order_keys` on every block with its global row offset (blocks in source order)."""
    import ray

    @ray.remote
    def num_rows(t: pa.Table) -> int:
        return t.num_rows

    @ray.remote
    def keys(t: pa.Table, row0: int) -> pa.Table:
        return P.order_keys(t, split, row0=row0, keep_row=True)

    refs = ds.to_arrow_refs()                       # in order: the dataset was read preserving it
    sizes = ray.get([num_rows.remote(r) for r in refs])
    offsets = np.r_[0, np.cumsum(sizes)[:-1]].astype(int)
    return ray.data.from_arrow_refs([keys.remote(r, int(o)) for r, o in zip(refs, offsets)])


def _drop_block(t: pa.Table) -> pa.Table:
    return P.drop_missing(t)[0]


def _uniques_block(t: pa.Table) -> pa.Table:
    u, i = pc.unique(t["user"]), pc.unique(t["item"])
    n = max(len(u), len(i))
    return pa.table({"user": pa.concat_arrays([F.as_array(u), pa.nulls(n - len(u), u.type)]),
                     "item": pa.concat_arrays([F.as_array(i), pa.nulls(n - len(i), i.type)])})


def _encode_block(t: pa.Table, uv: pa.Array, iv: pa.Array) -> pa.Table:
    t = t.set_column(0, "user", P.encode_ids(t["user"], uv)).set_column(1, "item", P.encode_ids(t["item"], iv))
    return t.append_column("bucket", pc.bit_wise_and(t["user"], N_BUCKETS - 1))


def _dedup_group(t: pa.Table) -> pa.Table:
    t = P.sort_rows(t.drop_columns(["bucket"]))
    return P.drop_duplicates(t)[0]


def _rating_block(t: pa.Table, min_rating: float) -> pa.Table:
    return P.rating_filter(t, min_rating)[0]


def _count_block(t: pa.Table, n_users: int, n_items: int) -> pa.Table:
    u = F.as_array(t["user"]).to_numpy(zero_copy_only=False)
    i = F.as_array(t["item"]).to_numpy(zero_copy_only=False)
    return pa.table({"u": [np.bincount(u, minlength=n_users + 1)], "i": [np.bincount(i, minlength=n_items + 1)]})


def _kcore_block(t: pa.Table, uc: np.ndarray, ic: np.ndarray, user_core: int, item_core: int) -> pa.Table:
    u = F.as_array(t["user"]).to_numpy(zero_copy_only=False)
    i = F.as_array(t["item"]).to_numpy(zero_copy_only=False)
    return t.filter(pa.array((uc[u] >= user_core) & (ic[i] >= item_core)))


def _remap_block(t: pa.Table, umap: np.ndarray, imap: np.ndarray) -> pa.Table:
    u = F.as_array(t["user"]).to_numpy(zero_copy_only=False)
    i = F.as_array(t["item"]).to_numpy(zero_copy_only=False)
    t = t.set_column(0, "user", pa.array(umap[u], pa.int32()))
    return t.set_column(1, "item", pa.array(imap[i], pa.int32()))


def _sum_counts(ds, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    c = _collect(ds.map_batches(_count_block, batch_format="pyarrow", batch_size=None,
                                fn_kwargs={"n_users": n_users, "n_items": n_items}))
    if not c.num_rows:
        return np.zeros(n_users + 1, np.int64), np.zeros(n_items + 1, np.int64)
    uc = pc.list_flatten(c["u"]).to_numpy(zero_copy_only=False).reshape(c.num_rows, n_users + 1).sum(axis=0)
    ic = pc.list_flatten(c["i"]).to_numpy(zero_copy_only=False).reshape(c.num_rows, n_items + 1).sum(axis=0)
    return uc, ic


def _clean_encode(ds, cfg: DatasetConfig, where: str, counts: dict) -> tuple[pa.Table, pa.Array, pa.Array]:
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
    ds = _number_rows(ds, cfg.split)
    if n_ts == 0:
        raise DataError("no interaction has a user id, an item id and a timestamp")
    ds = ds.map_batches(_drop_block, **mb)
    uq = _collect(ds.map_batches(_uniques_block, **mb))
    uv, iv = P.sorted_unique(uq["user"]), P.sorted_unique(uq["item"])
    ds = ds.map_batches(_encode_block, fn_kwargs={"uv": uv, "iv": iv}, **mb)
    ds = ds.groupby("bucket").map_groups(_dedup_group, batch_format="pyarrow").materialize()
    n_clean = tot["rows"] - tot["null_ids"] - tot["null_ts"]
    n = ds.count()
    counts["dropped_duplicates"] = n_clean - n
    f = cfg.filter
    if f.min_rating is not None:
        if "rating" not in ds.schema().names:
            raise DataError("filter.min_rating is set but columns.rating is not configured")
        ds = ds.map_batches(_rating_block, fn_kwargs={"min_rating": f.min_rating}, **mb).materialize()
    n_rated = ds.count()
    counts["dropped_rating_filter"] = n - n_rated
    if n_rated == 0:
        raise DataError(f"filter.min_rating={f.min_rating} leaves no interactions")
    rounds = 0
    n_now = n_rated
    if f.user_core > 1 or f.item_core > 1:
        while True:
            uc, ic = _sum_counts(ds, len(uv), len(iv))
            ds2 = ds.map_batches(_kcore_block, fn_kwargs={"uc": uc, "ic": ic, "user_core": f.user_core,
                                                          "item_core": f.item_core}, **mb).materialize()
            n2 = ds2.count()
            if n2 == n_now:
                break
            rounds += 1
            ds, n_now = ds2, n2
            if n2 == 0:
                raise DataError(f"k-core filter (user_core={f.user_core}, item_core={f.item_core}) "
                                "leaves no interactions")
    counts["after_kcore"] = {"rows": n_now, "dropped": n_rated - n_now, "iterations": rounds}
    uc, ic = _sum_counts(ds, len(uv), len(iv))
    upresent, ipresent = np.flatnonzero(uc[1:]) + 1, np.flatnonzero(ic[1:]) + 1
    umap, imap = P.compact_mapping(upresent, len(uv)), P.compact_mapping(ipresent, len(iv))
    ds = ds.map_batches(_remap_block, fn_kwargs={"umap": umap, "imap": imap}, **mb)
    t = _collect(ds)
    # groups hold disjoint users, each sorted: one stable sort by user restores the global order
    t = t.take(pc.sort_indices(t, sort_keys=[("user", "ascending")])).combine_chunks()
    return P.drop_order_columns(t), uv.take(pa.array(upresent - 1)), iv.take(pa.array(ipresent - 1))


def run_ray(cfg: DatasetConfig, ray_address: str | None = None) -> tuple[P.PreparedTables, SourceTables]:
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
        t, uv, iv = _clean_encode(ds, cfg, where, counts)
        return P.finish(t, uv, iv, src, cfg, counts), src
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
