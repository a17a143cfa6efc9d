"""Synthetic interaction logs and prepared datasets for tests (shared by every test module).

    from tests.synthetic import prepared_dataset, write_synthetic_log
    ds_dir = prepared_dataset(tmp_path)                 # runs the real `prepare`
    ds = PreparedDataset.open(ds_dir)

The log is deterministic for a given seed: users `1000 + k` (integers), items `"i000"`.. (strings),
every user has at least 3 events (so every user has valid/test rows under leave-one-out),
timestamps strictly increasing per user, ratings 1..5. The item table (Parquet) has a
categorical `category`, a multi-valued `tags` ("a|b"), a text `title` and a 4-d dense `vec`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml


def synthetic_tables(n_users: int = 50, n_items: int = 40, n_events: int | None = None, seed: int = 0
                     ) -> tuple[pa.Table, pa.Table]:
    """(interactions, items) tables; see the module docstring."""
    rng = np.random.default_rng(seed)
    n_events = n_events if n_events is not None else 8 * n_users
    if n_events < 3 * n_users:
        raise ValueError("n_events must be >= 3 * n_users")
    users = np.concatenate([np.repeat(np.arange(n_users), 3), rng.integers(0, n_users, n_events - 3 * n_users)])
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8           # a popularity skew, like real logs
    items = rng.choice(n_items, size=n_events, p=pop / pop.sum())
    ts = 1_600_000_000 + rng.permutation(n_events).astype(np.int64) * 60
    ratings = rng.integers(1, 6, n_events).astype(np.float64)
    inter = pa.table({
        "user_id": pa.array(1000 + users, pa.int64()),
        "item_id": pa.array(np.char.add("i", np.char.zfill(items.astype(str), 3))),
        "ts": pa.array(ts),
        "rating": pa.array(ratings),
    })
    cats = np.array(["books", "games", "music", "film"])
    tag_pool = np.array(["red", "green", "blue", "old", "new"])
    ids = np.arange(n_items)
    t1 = tag_pool[ids % 5]
    t2 = tag_pool[(ids * 3 + 1) % 5]
    tags = np.where(ids % 3 == 0, t1, np.char.add(np.char.add(t1, "|"), t2))
    words = np.array(["The", "Great", "Return", "of", "Blue", "Night", "Café", "2049"])
    title = np.char.add(np.char.add(words[ids % 8], " "), np.char.add(words[(ids // 8) % 8], np.char.add(" ", ids.astype(str))))
    vec = rng.normal(size=(n_items, 4)).astype(np.float32)
    item_tbl = pa.table({
        "item_id": pa.array(np.char.add("i", np.char.zfill(ids.astype(str), 3))),
        "category": pa.array(cats[ids % 4]),
        "tags": pa.array(tags),
        "title": pa.array(title),
        "vec": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), 4),
    })
    return inter, item_tbl


def write_synthetic_log(dir: str | os.PathLike, n_users: int = 50, n_items: int = 40, n_events: int | None = None,
                        seed: int = 0, with_items: bool = True, fmt: str = "csv", name: str = "synthetic",
                        split: dict | None = None, filter: dict | None = None) -> Path:
    """Write interactions (`fmt`: csv or parquet) + items.parquet + a dataset YAML; returns the YAML path."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    d = Path(dir)
    d.mkdir(parents=True, exist_ok=True)
    inter, items = synthetic_tables(n_users, n_items, n_events, seed)
    inter_path = d / f"interactions.{fmt}"
    if fmt == "csv":
        pacsv.write_csv(inter, inter_path)
    elif fmt == "parquet":
        pq.write_table(inter, inter_path)
    else:
        raise ValueError(f"fmt must be csv or parquet, got {fmt!r}")
    cfg = {
        "name": name,
        "source": {"kind": "table", "interactions": str(inter_path)},
        "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts", "rating": "rating"},
        "filter": filter or {"min_rating": None, "user_core": 0, "item_core": 0},
        "split": split or {"protocol": "leave_one_out"},
    }
    if with_items:
        items_path = d / "items.parquet"
        pq.write_table(items, items_path)
        cfg["source"]["items"] = str(items_path)
        cfg["item_features"] = [
            {"column": "category", "kind": "categorical"},
            {"column": "tags", "kind": "multi", "sep": "|"},
            {"column": "title", "kind": "text", "buckets": 1000, "max_tokens": 8},
            {"column": "vec", "kind": "dense"},
        ]
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def prepared_dataset(tmp_dir: str | os.PathLike, engine: str = "arrow", **kw) -> Path:
    """Write a synthetic log under tmp_dir/raw and prepare it into tmp_dir/prepared (returned).

    Keyword arguments go to `write_synthetic_log`. Reuses tmp_dir/prepared if it already exists.
    """
    from unirec_dist.config.dataset import DatasetConfig
    from unirec_dist.config.loader import load_config
    from unirec_dist.data.prepare import prepare

    tmp = Path(tmp_dir)
    out = tmp / "prepared"
    if (out / "manifest.json").is_file():
        return out
    cfg_path = write_synthetic_log(tmp / "raw", **kw)
    return prepare(load_config(DatasetConfig, cfg_path), out, engine=engine)
