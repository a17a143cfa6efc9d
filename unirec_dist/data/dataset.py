"""`PreparedDataset`: the one reader of a prepared dataset directory (see data/format.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from unirec_dist.data.format import FORMAT_VERSION, MANIFEST
from unirec_dist.errors import DataError
from unirec_dist.utils.jsonfile import load_json_object

TABLES = ("interactions", "train", "valid", "test", "items", "users")


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
        return (self.root / f"{name}.parquet").is_file()

    def table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        import pyarrow.parquet as pq

        if name not in TABLES:
            raise DataError(f"unknown table {name!r}; tables are: {', '.join(TABLES)}")
        path = self.root / f"{name}.parquet"
        if not path.is_file():
            raise DataError(f"{path} does not exist in prepared dataset {self.root}")
        return pq.read_table(path, columns=columns)

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
