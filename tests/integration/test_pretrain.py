"""`unirec pretrain` end to end on a local Ray cluster (2 CPU workers), fail-fast checks, and a
worker killed mid-run (Ray restarts the group from the latest checkpoint and the run finishes)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from unirec_dist.cli import main

CONFIG = "configs/pretrain/debug.yaml"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tests.synthetic import prepared_dataset

    return prepared_dataset(tmp_path_factory.mktemp("ds"), n_users=60)


def args(dataset, out, *extra, workers="2", address=None):
    flags = ["--workers", workers] + (["--address", address] if address else [])
    return ["pretrain", "--config", CONFIG, "--no-progress", *flags, f"data.path={dataset}",
            f"trainer.out_dir={out}", "data.batch_size=16", "trainer.max_epochs=2", *extra]


def test_two_worker_pretrain_end_to_end(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(args(dataset, out, "distributed.sharding.t_item=row_wise",
                   "distributed.checkpoint_every_n_steps=2", "distributed.keep_last=2"))
    assert rc == 0
    final = out / "checkpoints" / "final"
    assert f"checkpoint: {final}" in capsys.readouterr().out
    m = json.loads((final / "manifest.json").read_text())
    assert m["world_size"] == 2 and m["kind"] == "pretrain"
    assert m["plan"]["tables"]["t_item"]["sharding_type"] == "row_wise"
    assert m["plan"]["tables"]["t_item"]["ranks"] == [0, 1]
    assert m["dataset"]["vocab_hash"] and m["distributed"]["workers"] == 2
    assert m["table_optimizer"]["kind"] == "adagrad" and m["table_optimizer"]["optim.tables"] == "auto"
    assert m["step"] == 4      # 60 users, 16 per rank and step, 2 ranks -> 2 steps/epoch, 2 epochs
    # every worker reported its memory and its own rows of the row-wise table (tables were built on
    # meta, so no rank ever held the whole table)
    workers = json.loads((out / "pretrain.json").read_text())["worker_stats"]
    assert [w["rank"] for w in workers] == [0, 1]
    rows = [w["tables"]["t_item"]["rows"] for w in workers]
    n_item = m["dataset"]["vocab_sizes"]["item"]
    assert sum(rows) == n_item and all(0 < r < n_item for r in rows), rows
    assert all(w["hwm_mib"] >= w["rss_mib"] > 0 for w in workers)
    # keep-last-k in Ray's storage
    assert len([p for p in (out / "ray" / "debug").glob("checkpoint_*") if p.is_dir()]) == 2
    # the 2-worker checkpoint loads into 1 plain process (the model the fine-tuning issue uses)
    from unirec_dist.training.build import load_retriever

    model, manifest = load_retriever(final, dataset)
    assert model.item_embeddings().shape[0] == manifest["dataset"]["vocab_sizes"]["item"]


def test_rank_slices_are_disjoint(dataset):
    from unirec_dist.training.data import SequenceBatches, TrainSequences

    seqs = TrainSequences.from_dir(dataset)
    seen = []
    for r in range(2):
        b = SequenceBatches(seqs, 8, 20, seed=0, rank=r, world_size=2)
        for batch in b:
            seen.extend(batch.users.tolist())
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("extra, message", [
    (["distributed.sharding.t_nope=row_wise"], "table 't_nope' does not exist"),
    (["distributed.sharding.t_item=data_parallel"], "data_parallel is not supported"),
    (["distributed.sharding.t_item=diagonal"], "unknown sharding type"),
    (["optim.tables=adam", "distributed.device=cpu"], "optim.tables: 'adam' is not supported on cpu"),
])
def test_config_mistakes_fail_before_workers_start(dataset, tmp_path, capsys, extra, message):
    rc = main(args(dataset, tmp_path / "run", *extra))
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run" / "ray").exists()   # no Ray run was started


def test_address_that_does_not_answer_fails_fast(dataset, tmp_path, capsys):
    from tests.distributed.toy import free_port

    t0 = time.perf_counter()
    rc = main(args(dataset, tmp_path / "run", address=f"127.0.0.1:{free_port()}"))
    err = capsys.readouterr().err
    assert rc == 2 and "does not answer" in err
    assert time.perf_counter() - t0 < 30   # seconds, not a hang (generous bound for a loaded CI box)


def test_more_workers_than_cpus_fails_fast(dataset, tmp_path, capsys):
    rc = main(args(dataset, tmp_path / "run", workers="64"))
    err = capsys.readouterr().err
    assert rc == 2 and "needs 64 CPUs" in err, err


def test_killed_worker_resumes_from_checkpoint_and_finishes(dataset, tmp_path):
    """A worker process dies (os._exit) after step 5; Ray restarts the group from the latest
    reported checkpoint and the run completes all 6 steps; its final checkpoint loads."""
    from unirec_dist.config.distributed import load_pretrain_config
    from unirec_dist.training.build import load_retriever
    from unirec_dist.training.pretrain import pretrain

    out = tmp_path / "run"
    cfg = load_pretrain_config(CONFIG, [f"data.path={dataset}", f"trainer.out_dir={out}", "data.batch_size=16",
                                        "trainer.max_epochs=3", "distributed.checkpoint_every_n_steps=2",
                                        "distributed.max_failures=1"])
    final = pretrain(cfg, workers=2, progress=False, _test_fail_at_step=5)
    assert (out / ".test-failed-once").exists()      # the worker really died once
    m = json.loads((final / "manifest.json").read_text())
    assert m["step"] == 6 and m["world_size"] == 2
    summary = json.loads((out / "pretrain.json").read_text())
    assert summary["steps"] == 6
    model, _ = load_retriever(final, dataset)
    assert model.item_embeddings().shape[0] > 1
