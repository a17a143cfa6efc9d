"""Display fields: what a person reads beside an item's raw id (its title, a short list such as genres).

They come from the raw item columns `prepare` kept (items_raw.parquet); `unirec export` copies the
chosen ones into the bundle (display.parquet: item int32 + one string column per field), so the
Recommender, the HTTP app and `unirec explain` show names without the dataset at hand. Answers
keep the raw id as the key ("item"); display fields ride beside it ("display": {field: value},
null when the dataset has none).

    fields = resolve_fields(dataset, None)          # the defaults the dataset has: title, genres
    table = display_table(dataset, fields)          # item + fields as strings, or None
    names = ItemDisplay(table, n_items)             # names(index) -> {"title": ..., ...} | None
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unirec_dist.errors import DataError

DEFAULT_FIELDS = ("title", "genres")
RAW_ITEMS = "items_raw.parquet"


def raw_columns(dataset: Any) -> list[str]:
    """The raw item columns a prepared dataset kept (empty when it has no item table)."""
    import pyarrow.parquet as pq

    path = dataset.root / RAW_ITEMS
    return [n for n in pq.read_schema(path).names if n != "item"] if path.is_file() else []


def parse_fields(text: str | None) -> list[str] | None:
    """`--display-fields title,genres` -> ["title", "genres"]; "" -> [] (none); None -> None (defaults)."""
    if text is None:
        return None
    return [f.strip() for f in text.split(",") if f.strip()]


def resolve_fields(dataset: Any, fields: Sequence[str] | None, where: str = "--display-fields") -> list[str]:
    """The display fields to use: `fields` (each must be a raw item column of the dataset), or,
    when None, those of DEFAULT_FIELDS the dataset has (possibly none)."""
    have = raw_columns(dataset)
    if fields is None:
        return [f for f in DEFAULT_FIELDS if f in have]
    missing = [f for f in fields if f not in have]
    if missing:
        cols = ", ".join(have) if have else "none (the dataset has no item table)"
        raise DataError(f"{where}: the dataset's raw item columns have no {missing[0]!r}; columns are: {cols}")
    return list(dict.fromkeys(fields))


def display_table(dataset: Any, fields: Sequence[str]) -> pa.Table | None:
    """item int32 (ascending) + each field as a string column (null where unknown); None for no fields."""
    import pyarrow.parquet as pq

    if not fields:
        return None
    t = pq.read_table(dataset.root / RAW_ITEMS, columns=["item", *fields])
    t = t.take(pc.sort_indices(t["item"]))
    cols = {"item": t["item"].cast(pa.int32())}
    for f in fields:
        cols[f] = t[f].cast(pa.string())
    return pa.table(cols)


class ItemDisplay:
    """Display fields by item index (1..N). `names(i)` -> {field: value} without nulls, or None
    when the item (or the whole catalogue) has none."""

    def __init__(self, table: pa.Table | None, n_items: int) -> None:
        self.fields: list[str] = [] if table is None else [n for n in table.column_names if n != "item"]
        self._values: list[list[str | None]] = []
        if table is None or not self.fields:
            return
        items = table["item"].to_numpy(zero_copy_only=False).astype(np.int64)
        if items.size and (items.min() < 1 or items.max() > n_items):
            raise DataError(f"display fields name item indices outside 1..{n_items}")
        for f in self.fields:
            col: list[str | None] = [None] * (n_items + 1)
            for i, v in zip(items.tolist(), table[f].to_pylist()):
                col[i] = v
            self._values.append(col)

    def __bool__(self) -> bool:
        return bool(self.fields)

    def __call__(self, index: int) -> dict[str, str] | None:
        if not self.fields:
            return None
        out = {f: v for f, col in zip(self.fields, self._values) if (v := col[index]) is not None}
        return out or None


def label(raw: str, display: dict[str, str] | None) -> str:
    """One line for a person: `raw  First value (other, values)`, or the raw id alone."""
    if not display:
        return raw
    values = list(display.values())
    rest = f" ({'; '.join(values[1:])})" if len(values) > 1 else ""
    return f"{raw}  {values[0]}{rest}"
