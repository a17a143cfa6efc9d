"""`PreparedDataset`: the one reader of a prepared dataset directory (see data/format.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from unirec_dist.data.format import FORMAT_VERSION, MANIFEST
from unirec_dist.errors import DataError
from unirec_dist.utils.jsonfile import load_json_object

TABLES = ("interactions", "train", "valid", "test", "items", "users")


def split_path(root: str | os.PathLike, name: str) -> Path | None:
    """Where table `name` (interactions, train, valid, test, ...) of a prepared dataset lies:
    `name.parquet` or a folder `name/` of part files (the Ray engine's layout); None if neither."""
    root = Path(root)
    if (root / f"{name}.parquet").is_file():
        return root / f"{name}.parquet"
    if (root / name).is_dir():
        return root / name
    return None


def split_files(root: str | os.PathLike, name: str) -> list[Path]:
    """The Parquet files of table `name`, in user order (part files sorted by name: their user
    ranges ascend with the name). Raises DataError when the table is missing or has no parts."""
    path = split_path(root, name)
    if path is None:
        raise DataError(f"prepared dataset {root} has no {name}.parquet or {name}/ part files; the dataset is "
                        "incomplete (re-run `unirec prepare`)")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix == ".parquet")
    if not files:
        raise DataError(f"{path}: no .parquet part files; the dataset is incomplete (re-run `unirec prepare`)")
    return files


def read_split(root: str | os.PathLike, name: str, columns: list[str] | None = None) -> pa.Table:
    """Table `name` of a prepared dataset, whichever layout (`split_path`), as one table in user order."""
    import pyarrow.parquet as pq

    tables = []
    for f in split_files(root, name):
        try:
            tables.append(pq.read_table(f, columns=columns))
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{f}: not a readable Parquet file ({' '.join(str(e).split())[:160]})") from None
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


class PreparedDataset:
    """A prepared dataset directory, validated on open.

    `.manifest` (dict), `.n_users` / `.n_items` (real ids, excluding padding; indices are
    1..n), `.vocab_hash`, `.table(name)` and `.vocab(kind)` as pyarrow Tables.
    """

    def __init__(self, root: Path, manifest: dict) -> None:
        self.root = root
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | os.PathLike) -> "PreparedDataset":
        root = Path(path)
        if not root.is_dir():
            raise DataError(f"prepared dataset {root} does not exist (run `unirec prepare` first)")
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise DataError(f"{root} is not a prepared dataset: {MANIFEST} is missing")
        manifest = load_json_object(mpath, DataError)
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise DataError(f"{mpath}: format_version {version!r} is not supported "
                            f"(this unirec_dist reads {FORMAT_VERSION}); prepare the dataset again")
        for key in ("vocab_sizes", "counts", "vocab_hash", "split", "features"):
            if key not in manifest:
                raise DataError(f"{mpath}: key {key!r} is missing")
        return cls(root, manifest)

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.root.name)

    @property
    def n_users(self) -> int:
        return int(self.manifest["vocab_sizes"]["user"]) - 1

    @property
    def n_items(self) -> int:
        return int(self.manifest["vocab_sizes"]["item"]) - 1

    @property
    def vocab_hash(self) -> str:
        return self.manifest["vocab_hash"]

    @property
    def features(self) -> list[dict]:
        return list(self.manifest.get("features", []))

    def has_table(self, name: str) -> bool:
        return split_path(self.root, name) is not None

    def table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        if name not in TABLES:
            raise DataError(f"unknown table {name!r}; tables are: {', '.join(TABLES)}")
        return read_split(self.root, name, columns)

    def vocab(self, kind: str) -> pa.Table:
        """Vocab table (raw: string, index: int32) for 'user', 'item' or a categorical/multi feature."""
        import pyarrow.parquet as pq

        path = self.root / "vocab" / f"{kind}.parquet"
        if not path.is_file():
            known = sorted(p.stem for p in (self.root / "vocab").glob("*.parquet"))
            raise DataError(f"no vocab {kind!r} in {self.root}; vocabs are: {', '.join(known)}")
        return pq.read_table(path)

    def __repr__(self) -> str:
        return f"PreparedDataset({str(self.root)!r}, users={self.n_users}, items={self.n_items})"
