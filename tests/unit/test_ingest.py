"""Streaming, sharded training ingestion (training/data.py): each rank reads only its share of the
train part files, in-memory and streamed reads give the same batches, a resumed epoch continues
exactly where it stopped, and broken part files fail in one line before training starts."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.synthetic import prepared_dataset
from unirec_dist.errors import DataError
from unirec_dist.training.data import ParquetSource, SequenceBatches, TrainSequences, open_prepared


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A prepared dataset whose training rows sit in a train/ folder of 3 part files with small
    row groups (as the cluster-scale prepare writes them), plus short rows to skip."""
    ds = prepared_dataset(tmp_path_factory.mktemp("ingest"), n_users=230, n_items=60, n_events=2300)
    train = pq.read_table(ds / "train.parquet")
    (ds / "train.parquet").unlink()
    (ds / "train").mkdir()
    cuts = [0, 70, 150, train.num_rows]
    for k in range(3):
        pq.write_table(train.slice(cuts[k], cuts[k + 1] - cuts[k]), ds / "train" / f"part-{k:05d}.parquet",
                       row_group_size=16)
    return ds


def _users(batches) -> list[list[int]]:
    return [b.users.tolist() for b in batches]


def _epoch(ds, mode, rank=0, world=1, epoch=0, train_on="train", **kw):
    src = ParquetSource(ds, train_on=train_on, unit_rows=8, ingest=mode)
    sb = SequenceBatches(src, 8, 12, seed=5, rank=rank, world_size=world, buffer_batches=3, **kw)
    sb.set_epoch(epoch)
    return sb, list(sb)


@pytest.mark.parametrize("train_on", ["train", "train+valid"])
@pytest.mark.parametrize("world", [1, 2])
def test_streamed_and_in_memory_reads_give_the_same_batches(parts, train_on, world):
    for rank in range(world):
        _, mem = _epoch(parts, "memory", rank, world, epoch=1, train_on=train_on)
        sb, stream = _epoch(parts, "stream", rank, world, epoch=1, train_on=train_on)
        assert not sb.source.in_memory
        assert _users(mem) == _users(stream)
        for a, b in zip(mem, stream):
            assert torch.equal(a.seq["item"].values(), b.seq["item"].values())
            assert torch.equal(a.seq["item"].lengths(), b.seq["item"].lengths())


def test_same_sequences_as_the_whole_table(parts):
    """Every trainable training row reaches the batches exactly as stored (train+valid: with its
    validation target appended), and nothing else does."""
    train = pa.concat_tables([pq.read_table(f) for f in sorted((parts / "train").iterdir())])
    valid = {r["user"]: r["targets"][0] for r in pq.read_table(parts / "valid.parquet").to_pylist() if r["targets"]}
    for train_on in ("train", "train+valid"):
        want = {}
        for r in train.to_pylist():
            items = r["items"] + ([valid[r["user"]]] if train_on == "train+valid" and r["user"] in valid else [])
            if len(items) >= 2:
                want[r["user"]] = items[-13:]
        got = {}
        _, batches = _epoch(parts, "stream", train_on=train_on)
        for b in batches:
            jt = b.seq["item"]
            for u, v in zip(b.users.tolist(), torch.split(jt.values(), jt.lengths().tolist())):
                assert u not in got
                got[u] = v.tolist()
        assert got == want


def test_ranks_get_disjoint_equal_shares_that_change_per_epoch(parts):
    shares = {}
    for epoch in (0, 1):
        per_rank = []
        for rank in range(3):
            sb, batches = _epoch(parts, "stream", rank, 3, epoch=epoch)
            assert len(batches) == len(sb)
            per_rank.append(batches)
        assert len({len(b) for b in per_rank}) == 1                    # same number of steps
        sizes = [[len(b.users) for b in bs] for bs in per_rank]
        assert sizes[0] == sizes[1] == sizes[2]                         # same batch sizes per step
        users = [set(u for bt in _users(bs) for u in bt) for bs in per_rank]
        assert not (users[0] & users[1]) and not (users[0] & users[2]) and not (users[1] & users[2])
        shares[epoch] = users
    assert shares[0][0] != shares[1][0]                                  # a new permutation each epoch


def test_a_rank_reads_only_its_share(parts):
    """Streaming: rank r reads the row groups of its contiguous share (plus at most the boundary
    ones), never the whole dataset."""
    src = ParquetSource(parts, unit_rows=8, ingest="stream")
    total_groups = len(src.groups)
    for rank in range(2):
        src = ParquetSource(parts, unit_rows=8, ingest="stream")
        read_groups = set()
        inner = src._group

        def spy(fi, g, inner=inner):
            read_groups.add((fi, g))
            return inner(fi, g)

        src._group = spy
        list(SequenceBatches(src, 8, 12, seed=5, rank=rank, world_size=2, buffer_batches=3))
        assert len(read_groups) <= total_groups // 2 + 2, (len(read_groups), total_groups)


@pytest.mark.parametrize("world", [1, 2])
def test_resume_mid_epoch_continues_without_repeat_or_skip(parts, world):
    for rank in range(world):
        sb, full = _epoch(parts, "stream", rank, world, epoch=2)
        n = len(full)
        for k in (1, n // 2, n - 1):
            src = ParquetSource(parts, unit_rows=8, ingest="stream")
            resumed = SequenceBatches(src, 8, 12, seed=5, rank=rank, world_size=world, buffer_batches=3)
            resumed.set_epoch(2)
            resumed.skip(k)
            iter(resumed)                                  # an iter() that never yields changes nothing
            assert _users(resumed) == _users(full[k:])
            assert resumed.epoch == 3 and _users(resumed) != _users(full)  # the next pass is epoch 3


def test_short_rows_are_skipped_and_steps_stay_equal():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 6, 90)          # about a fifth of the rows have 1 item: no training pair
    s = TrainSequences(users=np.arange(90), values=rng.integers(1, 20, lengths.sum()),
                       offsets=np.concatenate([[0], np.cumsum(lengths)]))
    per_rank = [list(SequenceBatches(s, 4, 10, seed=1, rank=r, world_size=2, buffer_batches=2)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1])
    for bs in per_rank:
        assert all(int(b.seq["item"].lengths().min()) >= 2 for b in bs)


def test_missing_or_corrupt_part_file_is_one_line(parts, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(parts, bad)
    victim = bad / "train" / "part-00001.parquet"
    victim.write_bytes(victim.read_bytes()[:200])
    with pytest.raises(DataError, match="part-00001.parquet: not a readable Parquet file"):
        open_prepared(bad)
    for f in (bad / "train").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"train: no \.parquet part files"):
        open_prepared(bad)
    (bad / "train").rmdir()
    with pytest.raises(DataError, match="no train.parquet or train/ part files"):
        open_prepared(bad)


def test_single_file_datasets_still_load(tmp_path):
    """Datasets written before part files (one train.parquet) train unchanged."""
    ds = prepared_dataset(tmp_path, n_users=40)
    path, _ = open_prepared(ds)
    src = ParquetSource(path)
    assert src.in_memory and src.n_rows == pq.read_metadata(ds / "train.parquet").num_rows
    users = [u for b in SequenceBatches(src, 8, 12) for u in b.users.tolist()]
    # R = every row; short rows are skipped and the share is filled by reading on (cyclically)
    assert len(users) == src.n_rows and set(users) == set(TrainSequences.from_dir(ds).users.tolist())


@pytest.mark.parametrize("train_on", ["train", "train+valid"])
def test_prepare_writes_the_item_counts_a_pass_over_the_split_gives(parts, train_on):
    """Training reads the counts prepare wrote (O(items)) instead of a pass over the split (O(log)),
    and they are exactly what that pass counts (short rows skipped, valid targets appended)."""
    import json

    manifest = json.loads((parts / "manifest.json").read_text())
    n = manifest["vocab_sizes"]["item"]
    src = ParquetSource(parts, train_on=train_on, unit_rows=8)
    stored = src.item_counts(n)
    assert manifest["item_counts"]["file"] == "item_counts.parquet"
    np.testing.assert_array_equal(stored, src.pass_item_counts(n))
    assert stored[0] == 0 and stored.sum() > 0


def test_dataset_without_item_counts_still_trains_and_altered_counts_are_refused(parts, tmp_path, caplog):
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(parts, old)
    m = json.loads((old / "manifest.json").read_text())
    n = m["vocab_sizes"]["item"]
    expect = ParquetSource(parts).item_counts(n)
    del m["item_counts"]                       # as prepared before prepare wrote item counts
    (old / "manifest.json").write_text(json.dumps(m))
    (old / "item_counts.parquet").unlink()
    open_prepared(old)
    with caplog.at_level("WARNING"):
        np.testing.assert_array_equal(ParquetSource(old).item_counts(n), expect)
    assert "re-run prepare" in caplog.text
    bad = tmp_path / "bad"
    shutil.copytree(parts, bad)
    t = pq.read_table(bad / "item_counts.parquet")
    pq.write_table(t.set_column(1, "train", pa.array(np.ones(t.num_rows, np.int64))), bad / "item_counts.parquet")
    with pytest.raises(DataError, match=r"item_counts.parquet: sha256 differs .*re-run prepare"):
        open_prepared(bad)


@pytest.mark.parametrize("split", ["train", "valid"])
def test_pretrain_with_a_broken_part_file_is_one_error_line_before_workers_start(parts, tmp_path, capsys, split):
    """The CLI names the file in one `error:` line and exits 2 before Ray starts (no output)."""
    import shutil

    from pathlib import Path

    from unirec_dist.cli import main

    bad = tmp_path / "bad"
    shutil.copytree(parts, bad)
    if split == "valid":      # the valid split as part files too, one of them cut short
        t = pq.read_table(bad / "valid.parquet")
        (bad / "valid.parquet").unlink()
        (bad / "valid").mkdir()
        pq.write_table(t.slice(0, 50), bad / "valid" / "part-00000.parquet")
        pq.write_table(t.slice(50), bad / "valid" / "part-00001.parquet")
    victim = bad / split / "part-00001.parquet"
    victim.write_bytes(victim.read_bytes()[:100])
    out = tmp_path / "out"
    rc = main(["pretrain", "--config", str(Path(__file__).resolve().parents[2] / "configs/pretrain/debug.yaml"), "--workers", "2",
               f"data.path={bad}", f"trainer.out_dir={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in err if ln.startswith("error: ")]
    assert rc == 2 and len(errors) == 1 and "part-00001.parquet: not a readable Parquet file" in errors[0], err
    assert not out.exists()
