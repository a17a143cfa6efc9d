"""Both layouts of a prepared dataset's row tables (`name.parquet`, or a `name/` folder of part
files as `prepare --engine ray` writes them) read the same everywhere: PreparedDataset, the
evaluation queries, full histories, metrics, and training's train+valid target lookup."""
from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.synthetic import prepared_dataset
from unirec_dist.data.dataset import PreparedDataset
from unirec_dist.errors import DataError
from unirec_dist.training.data import ParquetSource, TrainSequences, ValidTargets, open_prepared, read_valid

SPLITS = ("interactions", "train", "valid", "test")


def _to_parts(root, n_parts: int = 3) -> None:
    """Rewrite the row tables as part files of contiguous user ranges with small row groups."""
    for name in SPLITS:
        t = pq.read_table(root / f"{name}.parquet")
        (root / f"{name}.parquet").unlink()
        (root / name).mkdir()
        users = t["user"].to_numpy()
        bounds = np.searchsorted(users, np.linspace(users.min(), users.max() + 1, n_parts + 1)[1:-1])
        for k, (a, b) in enumerate(zip(np.r_[0, bounds], np.r_[bounds, t.num_rows])):
            pq.write_table(t.slice(int(a), int(b - a)), root / name / f"part-{k:05d}.parquet", row_group_size=7)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    single = prepared_dataset(root, n_users=60, n_items=30, n_events=600)
    parts = root / "parts"
    shutil.copytree(single, parts)
    _to_parts(parts)
    return PreparedDataset.open(single), PreparedDataset.open(parts)


def test_every_reader_gets_the_same_rows_from_either_layout(layouts):
    from unirec_dist.metrics.evaluate import evaluate, popularity
    from unirec_dist.serving.export import full_histories
    from unirec_dist.serving.topn import user_histories

    a, b = layouts
    for name in SPLITS:
        assert not (b.root / f"{name}.parquet").exists() and b.has_table(name)
        assert a.table(name).equals(b.table(name)), name
        assert a.table(name, columns=["user"]).equals(b.table(name, columns=["user"]))
    assert read_valid(a.root).equals(read_valid(b.root))
    assert full_histories(a).equals(full_histories(b))
    users = np.arange(1, a.n_users + 1)
    assert user_histories(a, users).equals(user_histories(b, users))
    for split in ("valid", "test"):
        ra, rb = evaluate(popularity(a), a, split), evaluate(popularity(b), b, split)
        assert ra["metrics"] == rb["metrics"] and ra["metrics"]["HR@10"] > 0
    assert open_prepared(b.root)[0] == b.root


def test_train_plus_valid_finds_targets_in_valid_parts(layouts):
    a, b = layouts
    sa, sb = TrainSequences.from_dir(a.root, "train+valid"), TrainSequences.from_dir(b.root, "train+valid")
    for k in ("users", "values", "offsets"):
        assert np.array_equal(getattr(sa, k), getattr(sb, k)), k
    assert len(sb.values) > len(TrainSequences.from_dir(b.root, "train").values)   # targets appended
    # the folder's row groups (3 parts x several groups) are all searched, each by its user range
    src = ParquetSource(b.root, train_on="train+valid", ingest="stream")
    assert len(src.valid.files) == 3 and len(src.valid.groups) > 3
    valid = b.table("valid")
    want = {u: t[0] for u, t in zip(valid["user"].to_pylist(), valid["targets"].to_pylist()) if t}
    users = np.array(sorted(want) + [10_000], np.int64)
    has, target, _, _ = ValidTargets(sorted((b.root / "valid").iterdir()), False).lookup(users)
    assert has.tolist() == [True] * len(want) + [False]
    assert target[:-1].tolist() == [want[u] for u in sorted(want)]


def test_a_split_folder_without_parts_is_one_line_error(layouts, tmp_path):
    _, b = layouts
    broken = tmp_path / "ds"
    shutil.copytree(b.root, broken)
    for f in (broken / "valid").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"valid: no \.parquet part files"):
        open_prepared(broken)
    with pytest.raises(DataError, match="valid"):
        PreparedDataset.open(broken).table("valid")
    assert pc.sum(pc.list_value_length(PreparedDataset.open(broken).table("test")["targets"])).as_py() > 0


# -- the valid split's queries: a fixed random subset without reading the whole split ------------
def _valid_dirs(tmp_path):
    """The same 200 valid rows (every 5th without a target) as one file and as 3 part files,
    with different row-group sizes."""
    rng = np.random.default_rng(0)
    n = 200
    hist = [rng.integers(1, 50, rng.integers(1, 6)).tolist() for _ in range(n)]
    t = pa.table({"user": pa.array(np.arange(1, n + 1), pa.int32()),
                  "history": pa.array(hist, pa.list_(pa.int32())),
                  "targets": pa.array([[] if u % 5 == 0 else [u % 50 + 1] for u in range(n)], pa.list_(pa.int32())),
                  "target_ratings": pa.array([[] if u % 5 == 0 else [4.0] for u in range(n)], pa.list_(pa.float32()))})
    single, parts = tmp_path / "single", tmp_path / "parts"
    single.mkdir()
    (parts / "valid").mkdir(parents=True)
    pq.write_table(t, single / "valid.parquet", row_group_size=13)
    for k, (a, b) in enumerate([(0, 70), (70, 71), (71, 200)]):
        pq.write_table(t.slice(a, b - a), parts / "valid" / f"part-{k:05d}.parquet", row_group_size=7)
    return t, single, parts


def _whole_table_subset(t, max_users, seed):
    """The subset as read_valid chose it by reading the whole split (the reference)."""
    t = t.filter(pc.greater(pc.list_value_length(t["targets"]), 0)).select(["user", "history", "targets"])
    if max_users is not None and t.num_rows > max_users:
        t = t.take(np.sort(np.random.default_rng(seed).choice(t.num_rows, max_users, replace=False)))
    return t


@pytest.mark.parametrize("max_users,seed", [(None, 0), (1, 0), (37, 0), (37, 1), (159, 3), (160, 0), (500, 0)])
def test_valid_subset_is_the_whole_table_one_in_either_layout(tmp_path, max_users, seed):
    t, single, parts = _valid_dirs(tmp_path)
    want = _whole_table_subset(t, max_users, seed)
    for root in (single, parts):
        got = read_valid(root, max_users, seed=seed)
        assert got.column_names == ["user", "history", "targets"]
        assert got.equals(want), (root.name, max_users, seed)
    assert read_valid(parts, max_users, seed=seed, ratings=True).column_names[-1] == "target_ratings"


def test_valid_subset_reads_only_targets_and_the_chosen_row_groups(tmp_path, monkeypatch):
    """Choosing 3 queries out of 160 reads the `targets` column of every row group and the
    other columns of at most 3 row groups; never a whole file."""
    _, _, parts = _valid_dirs(tmp_path)
    reads = []
    real = pq.ParquetFile.read_row_group

    def spy(self, i, columns=None, **kw):
        reads.append(tuple(columns or ()))
        return real(self, i, columns=columns, **kw)

    def whole(*a, **kw):
        raise AssertionError("read a whole file")

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    monkeypatch.setattr(pq.ParquetFile, "read", whole)
    monkeypatch.setattr(pq, "read_table", whole)
    got = read_valid(parts, 3, seed=0)
    assert got.num_rows == 3
    n_groups = sum(pq.ParquetFile(f).metadata.num_row_groups for f in sorted((parts / "valid").iterdir()))
    assert reads.count(("targets",)) == n_groups
    assert 1 <= len([c for c in reads if c != ("targets",)]) <= 3
