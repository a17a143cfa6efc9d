"""`unirec pretrain` end to end on a local Ray cluster (2 CPU workers), fail-fast checks, and a
worker killed mid-run (Ray restarts the group from the latest checkpoint, continues from its step
and data position, and ends with the same weights as the uninterrupted run)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import time

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


def full_state(ckpt, tmp) -> dict:
    """Every tensor of a checkpoint's "model" and "optim" entries, unsharded, by dotted key (the
    test's own full read, through DCP's public converter)."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    pt = tmp / "full.pt"
    dcp_to_torch_save(ckpt, pt)
    state = torch.load(pt, weights_only=False)
    pt.unlink()
    out = {}

    def walk(x, key):
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{key}.{k}")
        else:
            out[key] = x

    for entry in ("model", "optim"):
        walk(state[entry], entry)
    return out


# 60 users, 8 per rank and step, 2 ranks -> 4 steps/epoch, 2 epochs: 8 steps, checkpoints at steps
# 3 (mid-epoch), 6 and 8
# (every table row-wise, pinned, so that the resumed run below changes the plan of each table it names)
RUN = ["data.batch_size=8", "distributed.checkpoint_every_n_steps=3", "distributed.keep_last=2",
       *(f"distributed.sharding.{t}=row_wise" for t in ("t_item", "t_title", "t_tags", "t_category"))]


@pytest.fixture(scope="module")
def straight_run(dataset, tmp_path_factory):
    """The uninterrupted 2-worker run: (out_dir, exit code, stdout); it also logs to CSV and MLflow."""
    out = tmp_path_factory.mktemp("straight") / "run"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(args(dataset, out, *RUN, "trainer.loggers=[csv,mlflow]"))
    return out, rc, buf.getvalue()


def test_pretrain_logs_from_rank_zero_and_reports(straight_run, monkeypatch, capsys):
    """trainer.loggers [csv, mlflow] with 2 workers: one MLflow run and one metrics.csv, written by
    rank 0 under the driver's out_dir; `unirec report` draws the curves and the workers."""
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out, rc, _ = straight_run
    assert rc == 0
    client = mlflow.MlflowClient((out / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("debug").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["config/distributed/workers"] == "2"
    assert "final/last_val/NDCG10" in run.data.metrics and "train/loss_epoch" in run.data.metrics
    rows = (out / "logs" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step") and len(rows) > 1
    capsys.readouterr()
    assert main(["report", str(out), "--out", str(out.parent / "report")]) == 0
    page = out.parent / "report" / "index.html"
    assert capsys.readouterr().out.strip() == f"report: {page}"
    assert {"training.png", "workers.png"} <= {p.name for p in page.parent.iterdir()}
    assert "target positions/s together" in page.read_text()


def test_two_worker_pretrain_end_to_end(dataset, straight_run):
    out, rc, stdout = straight_run
    assert rc == 0
    final = out / "checkpoints" / "final"
    assert f"checkpoint: {final}" in stdout
    # the one layout: a step folder, `final` and `last` pointing at it
    assert os.readlink(final) == os.readlink(out / "checkpoints" / "last") == "step-00000008"
    m = json.loads((final / "manifest.json").read_text())
    assert m["world_size"] == 2 and m["kind"] == "pretrain" and m["layout_version"] == 2
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata"} <= set(m["files"])
    assert m["plan"]["tables"]["t_item"]["sharding_type"] == "row_wise"
    assert m["plan"]["tables"]["t_item"]["ranks"] == [0, 1]
    assert m["dataset"]["vocab_hash"] and m["distributed"]["workers"] == 2
    assert m["table_optimizer"]["kind"] == "adagrad" and m["table_optimizer"]["optim.tables"] == "auto"
    assert m["step"] == 8
    # every worker reported its memory and its own rows of the row-wise table (tables were built on
    # meta, so no rank ever held the whole table)
    workers = json.loads((out / "pretrain.json").read_text())["worker_stats"]
    assert [w["rank"] for w in workers] == [0, 1]
    rows = [w["tables"]["t_item"]["rows"] for w in workers]
    n_item = m["dataset"]["vocab_sizes"]["item"]
    assert sum(rows) == n_item and all(0 < r < n_item for r in rows), rows
    assert all(w["hwm_mib"] >= w["rss_mib"] > 0 for w in workers)
    # keep-last-k in Ray's storage
    kept = [p for p in (out / "ray" / "debug").glob("checkpoint_*") if p.is_dir()]
    assert len(kept) == 2
    # the published step folder is hard links to Ray's copy of that checkpoint (one filesystem):
    # the run stores its final checkpoint once, not twice
    shards = sorted((final / n).resolve() for n in m["files"] if n.endswith(".distcp"))
    inodes = {(p.stat().st_dev, p.stat().st_ino) for c in kept for p in c.iterdir()}
    assert shards and all(p.stat().st_nlink == 2 and (p.stat().st_dev, p.stat().st_ino) in inodes for p in shards)
    # the 2-worker checkpoint loads into 1 plain process (the model the fine-tuning issue uses)
    from unirec_dist.models.factory import load_retriever

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


def test_killed_worker_resumes_from_checkpoint_and_finishes(dataset, straight_run, tmp_path, monkeypatch):
    """Worker 1 dies (os._exit, injected through the environment) after step 4; with the default
    distributed.max_failures Ray restarts the group, which continues from the step-3 checkpoint
    (mid-epoch: global step and data position continue, not step 0) and ends with the weights of
    the uninterrupted run."""
    import torch

    from unirec_dist.config.distributed import DistributedSection
    from unirec_dist.models.factory import load_retriever

    assert DistributedSection().max_failures == 3
    out = tmp_path / "run"
    trace = tmp_path / "trace.txt"
    monkeypatch.setenv("UNIREC_FAULT", "train.step-4")
    monkeypatch.setenv("UNIREC_FAULT_RANK", "1")
    monkeypatch.setenv("UNIREC_FAULT_ONCE", str(tmp_path / "failed-once"))
    monkeypatch.setenv("UNIREC_FAULT_TRACE", str(trace))
    assert main(args(dataset, out, *RUN)) == 0
    assert (tmp_path / "failed-once").exists()      # the worker really died once
    # steps each worker process went through: the restarted processes begin at step 4, right after
    # the step-3 checkpoint
    steps: dict[tuple[str, str], list[int]] = {}
    for line in trace.read_text().splitlines():
        point, rank, pid = line.split()
        if point.startswith("train.step-"):
            steps.setdefault((rank, pid), []).append(int(point.removeprefix("train.step-")))
    runs = sorted(steps.values(), key=lambda v: v[0])
    assert len(runs) == 4, steps                     # 2 ranks x (first attempt, restart)
    assert [r[0] for r in runs] == [1, 1, 4, 4] and all(r[-1] == 8 for r in runs[2:]), runs
    m = json.loads((out / "checkpoints" / "final" / "manifest.json").read_text())
    assert m["step"] == 8 and m["world_size"] == 2
    resumed, _ = load_retriever(out / "checkpoints" / "final", dataset)
    straight, _ = load_retriever(straight_run[0] / "checkpoints" / "final", dataset)
    a, b = resumed.state_dict(), straight.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_tables_that_cannot_fit_even_sharded_are_refused_before_workers_start(dataset, tmp_path, capsys):
    """Workers of 10 MiB (distributed.memory_gb) cannot hold the tables at dim 4096 (t_title alone:
    1000 x 4096 fp32 = 16 MiB, and as much Adagrad state; built on meta, nothing allocated) even
    row-wise: the driver's
    planner check refuses in one line with its bytes needed and available, exit 2, no Ray run."""
    import re

    rc = main(args(dataset, tmp_path / "run", "distributed.memory_gb=0.01", "model.embedding.dim=4096",
                   "distributed.sharding.t_title=row_wise"))
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    m = re.search(r"do not fit on 2 worker\(s\): they need ([0-9]+) MiB .* but the workers have ([0-9]+) MiB", err)
    assert m and int(m.group(1)) >= 31 and int(m.group(2)) == 20, err
    assert not (tmp_path / "run" / "ray").exists()


def test_resume_under_another_plan_continues_then_finetunes_in_one_process(dataset, straight_run, tmp_path, capsys):
    """The straight run's step-6 checkpoint (every table row-wise over 2 workers) continues on 2
    workers under another plan (`--resume-from`: DCP reshards weights and fused optimizer state):
    the id table and a pooled content table table-wise, another content table column-wise, one
    kept row-wise (an EmbeddingBagCollection mixing them). From step 6 it goes on as the straight
    run: the next step's loss and, at step 8, every parameter and every optimizer state (dense
    Adam, fused Adagrad) equal the straight run's to float rounding. Then the result loads into
    1 process for `unirec finetune` on half the users."""
    import csv

    ray_ckpts = {json.loads((p / "manifest.json").read_text())["step"]: p
                 for p in (straight_run[0] / "ray" / "debug").glob("checkpoint_*") if p.is_dir()}
    assert 6 in ray_ckpts, sorted(ray_ckpts)
    out = tmp_path / "run"
    other = {"t_item": "table_wise", "t_title": "table_wise", "t_tags": "column_wise", "t_category": "row_wise"}
    cli = args(dataset, out, *RUN, *(f"distributed.sharding.{t}={s}" for t, s in other.items()), "trainer.loggers=[csv]")
    assert main(cli[:1] + ["--resume-from", str(ray_ckpts[6])] + cli[1:]) == 0
    m = json.loads((out / "checkpoints" / "final" / "manifest.json").read_text())
    assert m["step"] == 8 and m["world_size"] == 2
    assert {t: p["sharding_type"] for t, p in m["plan"]["tables"].items()} == other
    assert len(m["plan"]["tables"]["t_item"]["ranks"]) == 1

    def losses(run):
        rows = csv.DictReader((run / "logs" / "metrics.csv").read_text().splitlines())
        return {int(r["step"]): float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")}

    # the first step after the resume (Lightning's step index 6) and the next
    resumed_loss, straight_loss = losses(out), losses(straight_run[0])
    assert sorted(resumed_loss) == [6, 7]
    for step in (6, 7):
        assert resumed_loss[step] == pytest.approx(straight_loss[step], rel=1e-6), step
    # Every tensor of the two step-8 checkpoints, the one at step 6 for scale: the only difference
    # allowed is float reassociation (another plan sums pooled rows and gradients in another
    # order). Measured: at most 6e-6 of what steps 6 -> 8 changed (dense_proj.vec.weight; 1.5e-7
    # absolute, fused Adagrad state), where a pooled table pooled the wrong way (TorchRec's MEAN
    # under a mixed plan, before content tables sum-pooled) moved by 0.3-0.5 of it and the
    # attention's key bias (Adam on float noise, before it was dropped) by 0.07-0.08.
    straight = full_state(straight_run[0] / "checkpoints" / "final", tmp_path)
    resumed, before = full_state(out / "checkpoints" / "final", tmp_path), full_state(ray_ckpts[6], tmp_path)
    assert resumed.keys() == straight.keys() == before.keys()
    assert any(k.startswith("optim.fused.") for k in resumed) and any(k.startswith("optim.dense_0.") for k in resumed)
    for k, a in resumed.items():
        b, c = straight[k].double(), before[k].double()
        change = float((b - c).abs().max()) if b.numel() else 0.0
        drift = float((a.double() - b).abs().max()) if b.numel() else 0.0
        assert drift <= 1e-4 * change, f"{k}: {drift:.3g} after 2 steps that changed it by {change:.3g}"
    capsys.readouterr()
    ft = tmp_path / "ft"
    rc = main(["finetune", "--from", str(out / "checkpoints" / "final"), "--config", "configs/finetune/debug.yaml",
               f"data.path={dataset}", f"trainer.out_dir={ft}", "data.fraction=0.5", "trainer.max_epochs=1",
               "trainer.limit_train_batches=2"])
    assert rc == 0, capsys.readouterr().err
    fm = json.loads((ft / "checkpoints" / "last" / "manifest.json").read_text())
    assert fm["kind"] == "finetune" and fm["finetune"]["source"]["step"] == 8
    assert fm["finetune"]["source"]["world_size"] == 2


def test_resume_from_a_checkpoint_with_nothing_left_to_train_is_refused(dataset, straight_run, tmp_path, capsys):
    """--resume-from the straight run's step-8 checkpoint with trainer.max_steps 8: one line
    before any worker starts (it used to train nothing and end in a traceback), nothing written."""
    out = tmp_path / "run"
    capsys.readouterr()
    cli = args(dataset, out, "trainer.max_steps=8")
    assert main(cli[:1] + ["--resume-from", str(straight_run[0] / "checkpoints" / "final")] + cli[1:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trainer.max_steps 8" in err[0] and "already at step 8" in err[0], err
    assert not out.exists()


def test_second_run_into_the_same_out_dir_is_refused(dataset, tmp_path, capsys):
    """Ray Train would silently continue a run of the same name and storage path: a second
    `pretrain` into an out_dir holding a run is refused in one line, before Ray starts, and
    nothing there changes."""
    out = tmp_path / "run"
    (out / "checkpoints" / "step-00000003").mkdir(parents=True)
    (out / "ray" / "debug").mkdir(parents=True)
    (out / "pretrain.json").write_text("{}")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    rc = main(args(dataset, out))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: trainer.out_dir {out} already holds a run (")
    assert "checkpoints" in err[0] and "pretrain.json" in err[0] and "--overwrite" in err[0] and "--resume" in err[0]
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_overwrite_removes_only_the_run_and_resume_needs_one(tmp_path):
    from unirec_dist.errors import CheckpointError
    from unirec_dist.training.pretrain import check_out_dir

    out = tmp_path / "run"
    for d in ("checkpoints/step-00000003", "logs", "ray/debug/checkpoint_1", "ray/other"):
        (out / d).mkdir(parents=True)
    for f in ("pretrain.json", "notes.txt"):
        (out / f).write_text("x")
    with pytest.raises(CheckpointError, match="no pretraining run to resume at .*ray/nope"):
        check_out_dir(out, out / "ray" / "nope", overwrite=False, resume=True)
    check_out_dir(out, out / "ray" / "debug", overwrite=False, resume=True)      # kept as it is
    assert (out / "ray" / "debug" / "checkpoint_1").is_dir() and (out / "checkpoints").is_dir()
    check_out_dir(out, out / "ray" / "debug", overwrite=True, resume=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "ray"]
    assert [p.name for p in (out / "ray").iterdir()] == ["other"]               # another run's folder stays


def test_mf_run_whose_only_parameters_are_tables_resumes_under_another_plan(dataset, tmp_path):
    """Matrix factorisation with no item features: every parameter is a sharded table, so the
    dense optimizer never has state. A 2-worker run (tables row-wise) stopped at step 3
    (trainer.max_steps) resumes from its checkpoint on 2 workers under another plan (table-wise)
    and finishes at step 6, its steps continuing from 3. (The dense optimizer's empty state used
    to be saved as an empty entry, which DCP stores nothing for and a resharding load then asked
    for: "Missing key in checkpoint state_dict: optim.dense_0".) The continuation also switches
    TorchRec's train pipeline on: Lightning then counts steps in its manual-optimization tracker,
    which a plain run's checkpoint left at 0 (it restarted at step 0 before
    `checkpointing.carry_optimizer_steps`); MF pipelines both id tables."""
    import csv

    mf = ["model.encoder={kind: mf}", "model.embedding.item_features=[]", "data.batch_size=8", "trainer.max_epochs=100",
          "trainer.loggers=[csv]", "distributed.checkpoint_every_n_steps=0", "distributed.max_failures=0"]
    plan = lambda s: [f"distributed.sharding.{t}={s}" for t in ("t_item", "t_user")]  # noqa: E731
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(args(dataset, first, *mf, *plan("row_wise"), "trainer.max_steps=3")) == 0
    ckpt = first / "checkpoints" / "final"
    m = json.loads((ckpt / "manifest.json").read_text())
    assert m["step"] == 3 and m["world_size"] == 2 and m["config"]["model"]["encoder"]["kind"] == "mf"
    optim = {k.split(".")[1] for k in full_state(ckpt, tmp_path) if k.startswith("optim.")}
    assert optim == {"fused"}, optim                 # no dense state: the model has no dense parameter
    cli = args(dataset, second, *mf, *plan("table_wise"), "trainer.max_steps=6", "distributed.train_pipeline=sparse_dist")
    assert main(cli[:1] + ["--resume-from", str(ckpt)] + cli[1:]) == 0
    m = json.loads((second / "checkpoints" / "final" / "manifest.json").read_text())
    assert m["step"] == 6 and m["world_size"] == 2
    assert {t: p["sharding_type"] for t, p in m["plan"]["tables"].items()} == {"t_item": "table_wise",
                                                                              "t_user": "table_wise"}
    assert m["train_pipeline"]["pipelined"] == ["embedding.item_ec", "embedding.user_ec"]
    rows = csv.DictReader((second / "logs" / "metrics.csv").read_text().splitlines())
    assert sorted({int(r["step"]) for r in rows if r.get("train/loss_step")}) == [3, 4, 5]
