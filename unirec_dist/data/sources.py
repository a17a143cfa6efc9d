"""Reading raw sources into Arrow tables: generic CSV/TSV/Parquet/JSONL files and MovieLens.

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
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Empty CSV file" in msg or "no columns" in msg.lower():
            raise DataError(f"{role} file {p} is empty") from None
        raise DataError(f"{p}: cannot read as {kind}: {msg}") from None
    if table.num_rows == 0:
        raise DataError(f"{role} file {p} has a header but no rows")
    if kind in ("csv", "tsv") and not column_names:
        warn_numeric_header(table.column_names, str(p))
    return table


def load_source(cfg: DatasetConfig) -> SourceTables:
    """The raw tables named by `cfg.source` (MovieLens kinds are fetched into the cache)."""
    s = cfg.source
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
