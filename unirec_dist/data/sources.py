"""Reading raw sources into Arrow tables: generic CSV/TSV/Parquet/JSONL files, RecBole atomic
files and MovieLens.

Every reader fails with a one-line `DataError` naming the file: missing, empty, unparsable.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from unirec_dist.config.dataset import DatasetConfig
from unirec_dist.errors import DataError

log = logging.getLogger(__name__)

_COMPRESSION = (".gz", ".bz2", ".zst", ".lz4")


@dataclass
class SourceTables:
    """Raw tables of one source, before cleaning. `files` lists {role, path, sha256, bytes}."""

    interactions: pa.Table
    items: pa.Table | None = None
    users: pa.Table | None = None
    files: list[dict] = field(default_factory=list)
    where: dict[str, str] = field(default_factory=dict)   # role -> file name for messages
    kind: str = "table"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    name = path.name.lower()
    for c in _COMPRESSION:
        if name.endswith(c):
            name = name[: -len(c)]
    if path.is_dir() or name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".tsv", ".tab")):
        return "tsv"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".csv", ".txt")):
        return "csv"
    raise DataError(f"{path}: cannot tell the file format from its name; set source.format "
                    "(csv, tsv, parquet or jsonl)")


def check_file(path: str | os.PathLike, role: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{role} file {p} does not exist")
    if p.is_file() and p.stat().st_size == 0:
        raise DataError(f"{role} file {p} is empty")
    return p


def csv_read_options(column_names: list[str] | None):
    """pyarrow ReadOptions for a file with a header row (None) or without one (its names)."""
    import pyarrow.csv as pacsv

    return pacsv.ReadOptions(column_names=list(column_names)) if column_names else pacsv.ReadOptions()


def warn_numeric_header(names: list[str], where: str) -> None:
    """One warning line when every column name of a header row is a number: the file most likely
    has no header, and its first event became the column names."""
    import pyarrow.compute as pc

    from unirec_dist.data.prepare import _NUM_RE

    if names and pc.all(pc.match_substring_regex(pa.array(names, pa.string()), _NUM_RE)).as_py():
        log.warning("%s: the header row %s looks like data (every name is a number); if the file has no "
                    "header set source.header: false and source.column_names", where, ",".join(names))


# what pyarrow's readers raise on a file they cannot parse
READ_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OSError)


def read_error(p: str | os.PathLike, role: str, kind: str, e: BaseException) -> DataError:
    """The one-line DataError for a reader's error `e` on file `p` (one of READ_ERRORS)."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "Empty CSV file" in msg or "no columns" in msg.lower():
        return DataError(f"{role} file {p} is empty")
    return DataError(f"{p}: cannot read as {kind}: {msg}")


def read_table(path: str | os.PathLike, role: str = "interactions", fmt: str = "auto",
               delimiter: str | None = None, column_types: dict[str, pa.DataType] | None = None,
               column_names: list[str] | None = None) -> pa.Table:
    """Read one file (or a Parquet directory) as an Arrow table; empty -> DataError.

    csv/tsv: `column_names` for a file without a header row (its first row is data)."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    p = check_file(path, role)
    kind = detect_format(p, fmt)
    try:
        if kind in ("csv", "tsv"):
            delim = delimiter or ("\t" if kind == "tsv" else ",")
            if len(delim) != 1:
                raise DataError(f"{p}: delimiter {delim!r} must be one character")
            table = pacsv.read_csv(
                p,
                read_options=csv_read_options(column_names),
                parse_options=pacsv.ParseOptions(delimiter=delim),
                # empty cells are missing values, for ids as much as for numbers
                convert_options=pacsv.ConvertOptions(strings_can_be_null=True, column_types=column_types or {}),
            )
        elif kind == "parquet":
            table = pq.read_table(p)
        elif kind == "jsonl":
            table = pajson.read_json(p)
        else:  # pragma: no cover - Literal in the config
            raise DataError(f"{p}: unknown format {kind!r}")
    except DataError:
        raise
    except READ_ERRORS as e:
        raise read_error(p, role, kind, e) from None
    if table.num_rows == 0:
        raise DataError(f"{role} file {p} has a header but no rows")
    if kind in ("csv", "tsv") and not column_names:
        warn_numeric_header(table.column_names, str(p))
    return table


def load_source(cfg: DatasetConfig) -> SourceTables:
    """The raw tables named by `cfg.source` (MovieLens kinds are fetched into the cache)."""
    s = cfg.source
    if s.kind == "recbole":
        return load_recbole(cfg)
    if s.kind != "table":
        from unirec_dist.data.movielens import load_movielens

        return load_movielens(s.kind, data_dir=s.data_dir)
    files = []
    where = {}
    tables: dict[str, pa.Table | None] = {}
    for role in ("interactions", "items", "users"):
        path = getattr(s, role)
        if path is None:
            tables[role] = None
            continue
        p = check_file(path, role)
        # source.column_names name the interactions file's columns; item/user tables keep their header
        names = s.column_names if role == "interactions" and not s.header else None
        tables[role] = read_table(p, role=role, fmt=s.format, delimiter=s.delimiter, column_names=names)
        where[role] = str(p)
        files.append(_file_entry(role, p))
    return SourceTables(tables["interactions"], tables["items"], tables["users"], files, where, kind="table")


def _file_entry(role: str, p: Path) -> dict:
    if p.is_dir():
        parts = sorted(q for q in p.rglob("*") if q.is_file())
        h = hashlib.sha256()
        for q in parts:
            h.update(str(q.relative_to(p)).encode() + b"\0" + sha256_file(q).encode())
        return {"role": role, "path": str(p), "sha256": h.hexdigest(), "bytes": sum(q.stat().st_size for q in parts)}
    return {"role": role, "path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size}


# ----------------------------------------------------------------------------- RecBole atomic files
# RecBole's field types and what each becomes here: token -> string (ids, `categorical`, `text`),
# token_seq -> list<string> (`multi`, `text`), float -> float64 (ratings, timestamps,
# `categorical`), float_seq -> list<float64> (`dense`). Sequence values are separated by one
# space, RecBole's default `seq_separator`.
RECBOLE_TYPES = {"token": pa.string(), "token_seq": pa.list_(pa.string()),
                 "float": pa.float64(), "float_seq": pa.list_(pa.float64())}
RECBOLE_SEQ_SEP = " "
_FEATURE_FIELD_TYPES = {"categorical": ("token", "float"), "text": ("token", "token_seq"),
                        "multi": ("token_seq",), "dense": ("float_seq",)}


def _first_non_number(values: pa.Array) -> str | None:
    from unirec_dist.data.prepare import _NUM_RE, _first_bad

    return _first_bad(values.drop_null(), _NUM_RE)


def read_atomic(path: Path, role: str) -> tuple[pa.Table, dict[str, str]]:
    """One RecBole atomic file (tab separated, header `name:type` per field) -> (table whose
    columns are the field names, typed per RECBOLE_TYPES; {field: type})."""
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    p = check_file(path, role)
    with open(p, encoding="utf-8-sig", errors="replace", newline="") as f:   # -sig: a BOM is not a name
        header = f.readline().rstrip("\r\n")
    types: dict[str, str] = {}
    for cell in header.split("\t"):
        name, colon, typ = cell.rpartition(":")
        if not colon or not name:
            raise DataError(f"{p}: header field {cell!r} has no type; RecBole headers are name:type "
                            f"(e.g. user_id:token), types {', '.join(RECBOLE_TYPES)}")
        if typ not in RECBOLE_TYPES:
            raise DataError(f"{p}: field {name!r} has unknown type {typ!r}; RecBole types are "
                            f"{', '.join(RECBOLE_TYPES)}")
        if name in types:
            raise DataError(f"{p}: field {name!r} appears twice in the header")
        types[name] = typ
    try:
        raw = pacsv.read_csv(
            p, read_options=pacsv.ReadOptions(column_names=list(types), skip_rows=1),
            # RecBole files are not quoted: a quote character is part of a value (titles)
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in types},
                                                 strings_can_be_null=True))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{p}: cannot read as a RecBole atomic file: {str(e).strip().splitlines()[0]}") from None
    if raw.num_rows == 0:
        raise DataError(f"{role} file {p} has a header but no rows")
    cols = {}
    for name, typ in types.items():
        col = raw[name].combine_chunks()
        if typ in ("token_seq", "float_seq"):   # a run of separators separates once
            col = pc.split_pattern_regex(pc.utf8_trim(col, RECBOLE_SEQ_SEP), f"{RECBOLE_SEQ_SEP}+")
        if typ in ("float", "float_seq"):
            bad = _first_non_number(pc.list_flatten(col) if typ == "float_seq" else col)
            if bad is not None:
                raise DataError(f"{p}: field {name!r} ({typ}) has a non-numeric value {bad!r}")
            col = col.cast(RECBOLE_TYPES[typ])
        cols[name] = col
    return pa.table(cols), types


def load_recbole(cfg: DatasetConfig) -> SourceTables:
    """A RecBole dataset folder `source.path` = NAME/ holding NAME.inter (required), NAME.item and
    NAME.user (optional; joined on columns.item / columns.user, which must be token fields of the
    same name in NAME.inter). Other atomic files (.kg, .link, .net) are not read."""
    import pyarrow.compute as pc

    assert cfg.source.path is not None, "source.kind recbole without source.path"   # refused by SourceConfig.validate
    d = Path(cfg.source.path).expanduser()
    if not d.is_dir():
        raise DataError(f"source.path {d}: not a folder (a RecBole dataset folder NAME/ holding NAME.inter)")
    inter_p = d / f"{d.name}.inter"
    if not inter_p.is_file():
        found = sorted(q.name for q in d.glob("*.inter"))
        raise DataError(f"{d}: no {inter_p.name} (RecBole names a dataset's files after its folder)"
                        + (f"; found {', '.join(found)}" if found else ""))
    inter, inter_types = read_atomic(inter_p, "interactions")
    tables = {"interactions": inter}
    where = {"interactions": str(inter_p)}
    files = [_file_entry("interactions", inter_p)]
    for role, suffix, key, feats in (("items", "item", cfg.columns.item, cfg.item_features),
                                     ("users", "user", cfg.columns.user, cfg.user_features)):
        p = d / f"{d.name}.{suffix}"
        tables[role] = None
        if not p.is_file():
            continue
        t, types = read_atomic(p, role)
        if key not in types:
            raise DataError(f"{p}: no field {key!r} to join on {inter_p.name}'s {key!r} (columns.{suffix}); "
                            f"its fields are {', '.join(f'{n}:{v}' for n, v in types.items())}")
        if key in inter_types and types[key] != inter_types[key]:
            raise DataError(f"{p}: field {key!r} is {types[key]} but {inter_types[key]} in {inter_p.name}; "
                            "the join key must have one type")
        if key in inter.column_names:
            known = pc.is_in(t[key], value_set=pc.unique(inter[key])).fill_null(False)
            if not pc.any(known).as_py():
                raise DataError(f"{p}: none of its {t.num_rows} {key!r} values occurs in {inter_p.name} "
                                f"(first {t[key][0].as_py()!r}); the files do not describe the same {suffix}s")
        for k, f in enumerate(feats):
            typ = types.get(f.column)
            if typ is not None and typ not in _FEATURE_FIELD_TYPES[f.kind]:
                raise DataError(f"{p}: field {f.column!r} is {typ}, but {suffix}_features[{k}] has kind "
                                f"{f.kind!r}, which needs a {' or '.join(_FEATURE_FIELD_TYPES[f.kind])} field")
        tables[role] = t
        where[role] = str(p)
        files.append(_file_entry(role, p))
    return SourceTables(tables["interactions"], tables["items"], tables["users"], files, where, kind="recbole")
