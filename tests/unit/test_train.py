"""Training config, data pipeline, checkpoint round trip and `unirec train` bad-input handling."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from tests.unit.test_models import make_prepared
from unirec_dist.cli import main
from unirec_dist.config.loader import load_config
from unirec_dist.config.train import TrainConfig

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = sorted((REPO / "configs" / "pretrain").glob("*.yaml"))


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("train_ds") / "prep")


@pytest.mark.parametrize("path", PRETRAIN, ids=[p.name for p in PRETRAIN])
def test_every_pretrain_config_loads(path):
    cfg = load_config(TrainConfig, path)
    assert cfg.data.path and cfg.name


def test_required_configs_exist():
    names = {p.name for p in PRETRAIN}
    assert {"debug.yaml", "ml-100k-sasrec.yaml", "ml-1m-sasrec.yaml", "ml-1m-hstu.yaml"} <= names


# -- bad input: one line, exit code 2, nothing written ------------------------------------------
def _run_bad(capsys, tmp_path, *args) -> str:
    out = tmp_path / "out"
    rc = main(["train", "--config", str(REPO / "configs/pretrain/debug.yaml"), f"trainer.out_dir={out}", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: ") and "\n" not in err
    assert not out.exists()            # failed before any work
    return err


def test_unknown_key_suggests_nearest(capsys, tmp_path, ds):
    err = _run_bad(capsys, tmp_path, f"data.path={ds}", "trainer.max_epoch=3")
    assert "trainer.max_epoch: unknown key (did you mean 'trainer.max_epochs'?)" in err


def test_unknown_section_key(capsys, tmp_path, ds):
    err = _run_bad(capsys, tmp_path, f"data.path={ds}", "model.encoder.num_block=3")
    assert "did you mean 'model.encoder.num_blocks'?" in err


def test_wrong_type(capsys, tmp_path, ds):
    err = _run_bad(capsys, tmp_path, f"data.path={ds}", "data.batch_size=big")
    assert "data.batch_size: expected an integer, got 'big'" in err


def test_out_of_range(capsys, tmp_path, ds):
    err = _run_bad(capsys, tmp_path, f"data.path={ds}", "model.encoder.dropout=1.5")
    assert "model.encoder.dropout: must be in [0, 1), got 1.5" in err


def test_bad_choice(capsys, tmp_path, ds):
    err = _run_bad(capsys, tmp_path, f"data.path={ds}", "model.encoder.kind=sasrek")
    assert "did you mean 'sasrec'?" in err


def test_missing_dataset(capsys, tmp_path):
    err = _run_bad(capsys, tmp_path, f"data.path={tmp_path / 'nope'}")
    assert "does not exist" in err and "nope" in err


def test_incompatible_dataset_version(capsys, tmp_path):
    old = make_prepared(tmp_path / "old", format_version=99)
    err = _run_bad(capsys, tmp_path, f"data.path={old}")
    assert "format_version 99 is not supported" in err


def test_unknown_item_feature(capsys, tmp_path, ds):
    err = _run_bad(capsys, tmp_path, f"data.path={ds}", "model.embedding.item_features=[genres]")
    assert "'genres' is not an item feature" in err


def test_missing_config_file(capsys, tmp_path):
    rc = main(["train", "--config", str(tmp_path / "none.yaml")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


# -- data --------------------------------------------------------------------------------------
def test_sequences_train_and_train_valid(ds):
    import pyarrow.parquet as pq

    from unirec_dist.training.data import TrainSequences

    train = pq.read_table(ds / "train.parquet").to_pylist()
    valid = {r["user"]: r["targets"][0] for r in pq.read_table(ds / "valid.parquet").to_pylist()}
    s = TrainSequences.from_dir(ds, "train")
    s2 = TrainSequences.from_dir(ds, "train+valid")
    for k, row in enumerate(train):
        items = row["items"]
        if len(items) >= 2:
            i = int(np.flatnonzero(s.users == row["user"])[0])
            assert s.values[s.offsets[i]:s.offsets[i + 1]].tolist() == items
        j = int(np.flatnonzero(s2.users == row["user"])[0])
        assert s2.values[s2.offsets[j]:s2.offsets[j + 1]].tolist() == items + [valid[row["user"]]]
    assert s2.ratings is not None and len(s2.ratings) == len(s2.values)


def test_batches_truncate_to_last_max_len_plus_one():
    from unirec_dist.training.data import SequenceBatches, TrainSequences

    s = TrainSequences(users=np.array([5, 6]), values=np.arange(1, 11), offsets=np.array([0, 7, 10]))
    b = next(iter(SequenceBatches(s, 2, max_len=3, shuffle=False)))
    jt = b.seq["item"]
    rows = dict(zip(b.users.tolist(), torch.split(jt.values(), jt.lengths().tolist())))
    assert rows[5].tolist() == [4, 5, 6, 7] and rows[6].tolist() == [8, 9, 10]


def test_rank_slices_are_disjoint_and_in_step():
    from unirec_dist.training.data import SequenceBatches, TrainSequences

    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 30, 103)
    s = TrainSequences(users=np.arange(1, 104), values=rng.integers(1, 50, lengths.sum()),
                       offsets=np.concatenate([[0], np.cumsum(lengths)]))
    per_rank = []
    for r in range(3):
        sb = SequenceBatches(s, 8, 20, seed=1, rank=r, world_size=3)
        sb.set_epoch(2)
        batches = list(sb)
        assert len(batches) == len(sb)
        per_rank.append(batches)
    assert len({len(b) for b in per_rank}) == 1                     # same number of steps
    seen = [set(torch.cat([b.users for b in bs]).tolist()) for bs in per_rank]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert sum(len(x) for x in seen) >= 103 - 2                     # at most world - 1 dropped
    # length grouping: at one step, ranks see similar lengths
    for step in range(len(per_rank[0])):
        maxes = [int(bs[step].seq["item"].lengths().max()) for bs in per_rank]
        assert max(maxes) - min(maxes) <= 21


def test_epochs_reshuffle_deterministically():
    from unirec_dist.training.data import SequenceBatches, TrainSequences

    lengths = np.full(40, 5)
    s = TrainSequences(users=np.arange(40), values=np.ones(200, dtype=np.int64), offsets=np.arange(0, 201, 5))
    a, b = SequenceBatches(s, 8, 10, seed=3), SequenceBatches(s, 8, 10, seed=3)
    e0 = [x.users.tolist() for x in a]
    e1 = [x.users.tolist() for x in a]
    assert e0 != e1
    assert e0 == [x.users.tolist() for x in b]
    _ = lengths


# -- checkpoint round trip ----------------------------------------------------------------------
def _debug_cfg(ds: Path, out: Path, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, REPO / "configs/pretrain/debug.yaml",
                       [f"data.path={ds}", f"trainer.out_dir={out}", "trainer.max_epochs=1",
                        "data.max_len=10", *extra])


def test_checkpoint_round_trip_and_vocab_check(ds, tmp_path):
    from unirec_dist.checkpoint.dcp import read_manifest
    from unirec_dist.data.batch import make_seq_batch
    from unirec_dist.errors import CheckpointError
    from unirec_dist.models.factory import load_retriever
    from unirec_dist.training.train import train

    ckpt = train(_debug_cfg(ds, tmp_path / "run"))
    mf = read_manifest(ckpt)
    assert mf["kind"] == "train" and mf["plan"] is None and mf["world_size"] == 1
    assert mf["dataset"]["vocab_hash"] == json.loads((ds / "manifest.json").read_text())["vocab_hash"]
    assert mf["dataset"]["vocab_sizes"]["item"] == 31
    assert mf["config"]["data"]["path"] == str(ds)
    assert {"step", "epoch", "versions"} <= set(mf)
    model, _ = load_retriever(ckpt, ds)
    again, _ = load_retriever(ckpt)
    batch = make_seq_batch(pa.array([1, 2]), pa.array([[1, 2, 3], [7]]), model.max_len)
    torch.testing.assert_close(model.query_embeddings(batch), again.query_embeddings(batch))
    torch.testing.assert_close(model.item_embeddings(), again.item_embeddings())
    # content buffers came back from the checkpoint, not zeros
    assert model.embedding.feat_genre.abs().sum() > 0
    other = make_prepared(tmp_path / "other", n_items=30, seed=5)
    with pytest.raises(CheckpointError, match="vocab_hash"):
        load_retriever(ckpt, other)


def test_same_seed_same_loss(ds, tmp_path):
    from unirec_dist.training.train import train

    losses = []
    for k in range(2):
        train(_debug_cfg(ds, tmp_path / f"r{k}", "trainer.checkpoint_every_n_epochs=0"))
        import csv

        with open(tmp_path / f"r{k}" / "logs" / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        losses.append([(r["step"], r["train/loss_step"]) for r in rows if r.get("train/loss_step")])
    assert losses[0] == losses[1] and losses[0]


def test_validation_masks_seen_items_when_configured(ds, tmp_path):
    """trainer.val_mask_seen decides the validation protocol: the logged NDCG@10 equals an
    evaluation of the same checkpoint under that protocol (and not under the other one)."""
    import csv

    import pyarrow.parquet as pq

    from unirec_dist.metrics.evaluate import evaluate_table
    from unirec_dist.models.factory import load_retriever
    from unirec_dist.training.train import train

    valid = pq.read_table(ds / "valid.parquet")
    for mask in (True, False):
        out = tmp_path / f"m{mask}"
        ckpt = train(_debug_cfg(ds, out, f"trainer.val_mask_seen={str(mask).lower()}"))
        with open(out / "logs" / "metrics.csv") as f:
            logged = [float(r["val/NDCG@10"]) for r in csv.DictReader(f) if r.get("val/NDCG@10")]
        model, mf = load_retriever(ckpt, ds)
        n_items = int(mf["dataset"]["vocab_sizes"]["item"]) - 1
        same = evaluate_table(model, valid, n_items, ks=(10,), mask_seen=mask, progress=False)
        other = evaluate_table(model, valid, n_items, ks=(10,), mask_seen=not mask, progress=False)
        assert logged and logged[-1] == pytest.approx(float(same["NDCG@10"]), abs=1e-6)
        assert abs(logged[-1] - float(other["NDCG@10"])) > 1e-6


def test_valid_split_is_read_only_when_validation_runs(ds, tmp_path, monkeypatch):
    """The valid queries are read the first time validation runs, once: a run that stops before
    any validation reads none of the valid split (and does not need it readable)."""
    import csv

    import unirec_dist.training.data as data
    from unirec_dist.training.train import train

    calls = []
    real = data.read_valid

    def spy(*a, **kw):
        calls.append(a)
        return real(*a, **kw)

    monkeypatch.setattr(data, "read_valid", spy)
    # 2 epochs, validation every 2nd: max_steps stops the run inside epoch 0, before any validation
    train(_debug_cfg(ds, tmp_path / "none", "trainer.max_epochs=2", "trainer.val_every_n_epochs=2",
                     "trainer.max_steps=1", "trainer.checkpoint_every_n_epochs=0"))
    assert calls == []
    # 2 validations (every epoch): one read
    train(_debug_cfg(ds, tmp_path / "two", "trainer.max_epochs=2", "trainer.val_every_n_epochs=1",
                     "trainer.checkpoint_every_n_epochs=0"))
    assert len(calls) == 1
    with open(tmp_path / "two" / "logs" / "metrics.csv") as f:
        assert sum(1 for r in csv.DictReader(f) if r.get("val/NDCG@10")) == 2


@pytest.mark.parametrize("started,completed,processed,epoch,want", [
    (2, 1, 2, 1, (1, 2)),      # saved mid-epoch 1 by the step callback
    (1, 1, 10, 1, (0, 10)),    # trainer.max_steps cut epoch 0 after 10 of 16 batches: epoch 0 goes on
    (1, 0, 16, 0, (1, 0)),     # saved on epoch 0's last batch: epoch 1 from its start
])
def test_loader_position_continues_the_epoch_the_run_was_in(started, completed, processed, epoch, want):
    """A final checkpoint written when trainer.max_steps stopped a run mid-epoch records the epoch
    as completed; resuming from it must finish that epoch's shuffle, not replay the next one."""
    from unirec_dist.training.checkpointing import loader_position

    prog = {"started": started, "completed": completed, "processed": completed, "ready": started}
    rest = {"epoch": epoch, "loops": {"fit_loop": {
        "epoch_progress": {"current": prog},
        "epoch_loop.batch_progress": {"current": {"processed": processed}}}}}
    assert loader_position(rest, 16) == want



@pytest.mark.parametrize("auto,manual", [(0, 8), (8, 0), (5, 5)])
def test_optimizer_steps_carry_between_automatic_and_manual_optimization(auto, manual):
    """A checkpoint of the train pipeline (manual optimization) resumed by the plain loop
    (automatic), or the other way: Lightning reads global_step from the resuming module's tracker."""
    from unirec_dist.training.checkpointing import carry_optimizer_steps

    def progress(n):
        return {"current": {"ready": n, "completed": n}, "total": {"ready": n, "completed": n}}

    rest = {"loops": {"fit_loop": {
        "epoch_loop.automatic_optimization.optim_progress": {"optimizer": {"step": progress(auto)}},
        "epoch_loop.manual_optimization.optim_step_progress": progress(manual)}}}
    carry_optimizer_steps(rest)
    fit = rest["loops"]["fit_loop"]
    assert fit["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"] == progress(max(auto, manual))
    assert fit["epoch_loop.manual_optimization.optim_step_progress"] == progress(max(auto, manual))
    carry_optimizer_steps({"loops": {}})     # a loop state without the trackers: left alone
