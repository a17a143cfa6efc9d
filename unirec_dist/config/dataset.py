"""Schema of a dataset YAML (configs/datasets/*.yaml), read by `unirec prepare`.

Example (a generic interaction log plus an item table)::

    name: my-shop
    source:
      kind: table                  # table | recbole | movielens-100k | movielens-1m
      interactions: logs/events.csv
      items: logs/items.parquet    # optional
      header: true                 # csv/tsv without a header row: false, plus column_names: [...]
    columns:
      user: user_id
      item: item_id
      timestamp: ts
      rating: null                 # or a column name
      event: null
      tie_break: null              # a column ordering events that share a timestamp
    item_features:
      - {column: category, kind: categorical}
      - {column: tags, kind: multi, sep: "|"}
      - {column: title, kind: text, buckets: 20000, max_tokens: 16}
      - {column: image_vec, kind: dense}
    filter: {min_rating: null, user_core: 5, item_core: 5}
    split: {protocol: leave_one_out, order: time, tie_break: row}   # row: source row order

A RecBole dataset folder (atomic files NAME.inter, optional NAME.item / NAME.user, NAME being
the folder's name) is read with `source: {kind: recbole, path: FOLDER}`; its columns are named
without their `:type` suffix (see configs/datasets/ml-100k-recbole.yaml).
For MovieLens sources, the fetched files are turned into tables with known column names and the
same `columns`/`item_features` mechanism applies (see configs/datasets/ml-1m.yaml).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from unirec_dist.errors import ConfigError


@dataclass
class SourceConfig:
    kind: Literal["table", "recbole", "movielens-100k", "movielens-1m"] = "table"
    path: str | None = None             # kind=recbole: the dataset folder (NAME.inter, NAME.item, NAME.user)
    interactions: str | None = None     # path (csv/tsv/parquet/jsonl/.dat) for kind=table
    items: str | None = None            # optional item table, joined on the item column
    users: str | None = None            # optional user table, joined on the user column
    format: Literal["auto", "csv", "tsv", "parquet", "jsonl"] = "auto"   # auto: by file extension
    delimiter: str | None = None        # overrides the format's default delimiter
    header: bool = True                 # csv/tsv: false when the first row is data, not names
    column_names: list[str] | None = None   # csv/tsv with header: false: the columns' names
    # where fetched sources are cached; default $UNIREC_DATA or the user cache dir
    data_dir: str | None = None

    def validate(self) -> None:
        if self.kind == "table" and not self.interactions:
            raise ConfigError("source.interactions: required when source.kind is 'table'")
        if self.kind == "recbole" and not self.path:
            raise ConfigError("source.path: required when source.kind is 'recbole' (the RecBole dataset folder)")
        if self.kind != "recbole" and self.path:
            raise ConfigError(f"source.path: only with source.kind 'recbole' (kind is {self.kind!r})")
        if not self.header and not self.column_names:
            raise ConfigError("source.column_names: required when source.header is false "
                              "(the names of the file's columns, in order)")
        if self.header and self.column_names:
            raise ConfigError("source.column_names: only with source.header: false "
                              "(a file with a header row names its own columns)")


@dataclass
class ColumnsConfig:
    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    rating: str | None = None
    event: str | None = None
    # orders events of a user that share a timestamp (e.g. add-to-cart position), ascending;
    # events still tied after it keep split.tie_break's order
    tie_break: str | None = None

    def validate(self) -> None:
        # one column cannot play two roles (user=item_id would build "users" that are items)
        seen: dict[str, str] = {}
        for role in ("user", "item", "timestamp", "rating", "event"):
            col = getattr(self, role)
            if col is None:
                continue
            if col in seen:
                raise ConfigError(f"{seen[col]} and {role} are both column {col!r}; each role needs its own column")
            seen[col] = role


@dataclass
class FeatureConfig:
    column: str
    kind: Literal["categorical", "multi", "text", "dense"]
    sep: str = "|"                  # multi: separator inside a string cell (lists are taken as-is)
    buckets: int = 20000            # text: hash buckets for tokens (index 0 = padding)
    max_tokens: int = 16            # text: tokens kept per value
    max_values: int = 32            # multi: values kept per cell
    name: str | None = None         # feature name in the prepared dataset (default: column)

    @property
    def feature_name(self) -> str:
        return self.name or self.column

    def validate(self) -> None:
        if self.buckets < 2:
            raise ConfigError(f"buckets: must be >= 2, got {self.buckets}")
        if self.max_tokens < 1 or self.max_values < 1:
            raise ConfigError("max_tokens/max_values: must be >= 1")


@dataclass
class FilterConfig:
    min_rating: float | None = None   # keep interactions with rating >= this
    user_core: int = 0                # k-core: users with >= this many interactions (iterated)
    item_core: int = 0

    def validate(self) -> None:
        if self.user_core < 0 or self.item_core < 0:
            raise ConfigError("user_core/item_core: must be >= 0")


@dataclass
class SplitConfig:
    protocol: Literal["leave_one_out", "temporal"] = "leave_one_out"
    valid_fraction: float = 0.1       # temporal: share of the time-ordered log for validation
    test_fraction: float = 0.1        # temporal: share for test
    max_history: int | None = None    # keep only the last N items of each history (None: all)
    # time: each user's events by timestamp; row: by their row order in the source (for logs
    # whose timestamps are missing or constant; the timestamp column is then not read)
    order: Literal["time", "row"] = "time"
    # events sharing a timestamp (after columns.tie_break): row = source row order (the only
    # order the log gives), random = a seeded shuffle (split.seed). Never by item id: the
    # largest id of a tied group would become the test target.
    tie_break: Literal["row", "random"] = "row"
    seed: int = 0

    def validate(self) -> None:
        if self.order == "row" and self.tie_break == "random":
            raise ConfigError("tie_break: 'random' contradicts order 'row' (the row order is the order)")
        # messages without a "split:" prefix: the loader adds the section's name
        if not 0 <= self.valid_fraction < 1:
            raise ConfigError(f"valid_fraction: must be in [0, 1), got {self.valid_fraction}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"test_fraction: must be in (0, 1), got {self.test_fraction}")
        if self.valid_fraction + self.test_fraction >= 1:
            raise ConfigError(f"valid_fraction + test_fraction: must be below 1, got "
                              f"{self.valid_fraction} + {self.test_fraction}")


@dataclass
class DatasetConfig:
    name: str
    source: SourceConfig = field(default_factory=SourceConfig)
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    item_features: list[FeatureConfig] = field(default_factory=list)
    user_features: list[FeatureConfig] = field(default_factory=list)
    filter: FilterConfig = field(default_factory=FilterConfig)
    split: SplitConfig = field(default_factory=SplitConfig)

    def validate(self) -> None:
        names = [f.feature_name for f in self.item_features + self.user_features]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"features: duplicate feature name(s) {sorted(dup)}")


def load_dataset_config(path, overrides: list[str] | None = None) -> DatasetConfig:
    from unirec_dist.config.loader import load_config

    return load_config(DatasetConfig, path, overrides)
