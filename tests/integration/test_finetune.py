"""End to end fine-tuning on synthetic data: pretrain a tiny model on dataset A, fine-tune it on
dataset B whose vocab differs (new items, new users, a different set of tags), through the
library and the `unirec finetune` CLI; alignment failures exit 2 with one line."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.synthetic import prepared_dataset, write_synthetic_log
from unirec_dist.cli import main

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = str(REPO / "configs/pretrain/debug.yaml")
FINETUNE = str(REPO / "configs/finetune/debug.yaml")
ITEM_W = "embedding.item_ec.embeddings.t_item.weight"
USER_W = "embedding.user_ec.embeddings.t_user.weight"


def _prepare_variant(root: Path, seed: int, n_items: int, rename=None, reverse_items: bool = False) -> Path:
    """A synthetic dataset whose raw item ids are renamed (`rename`: prefix) or whose item table
    is attached to the wrong ids (`reverse_items`), prepared with the real `prepare`."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    from unirec_dist.config.dataset import DatasetConfig
    from unirec_dist.config.loader import load_config
    from unirec_dist.data.prepare import prepare

    cfg_path = write_synthetic_log(root / "raw", n_users=40, n_items=n_items, seed=seed)
    items = pq.read_table(root / "raw" / "items.parquet")
    inter = pacsv.read_csv(root / "raw" / "interactions.csv")
    if rename:
        items = items.set_column(0, "item_id", pc.replace_substring(items["item_id"], "i", rename))
        inter = inter.set_column(1, "item_id", pc.replace_substring(inter["item_id"], "i", rename))
        pacsv.write_csv(inter, root / "raw" / "interactions.csv")
    if reverse_items:
        items = items.set_column(0, "item_id", pa.array(items["item_id"].to_pylist()[::-1]))
    pq.write_table(items, root / "raw" / "items.parquet")
    return prepare(load_config(DatasetConfig, cfg_path), root / "prepared")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Dataset A (40 items), its pretrained checkpoint (with a user table), dataset B (50 items:
    39 known + 11 new, 60 users of which 50 known)."""
    tmp = tmp_path_factory.mktemp("ft")
    a = prepared_dataset(tmp / "a", n_users=50, n_items=40, seed=0)
    b = prepared_dataset(tmp / "b", n_users=60, n_items=50, seed=1)
    rc = main(["train", "--config", PRETRAIN, f"data.path={a}", f"trainer.out_dir={tmp / 'pre'}",
               "trainer.max_epochs=1", "trainer.limit_train_batches=2", "model.embedding.user_id=true",
               "trainer.loggers=[]"])
    assert rc == 0
    return {"tmp": tmp, "a": a, "b": b, "ckpt": tmp / "pre" / "checkpoints" / "last"}


def _error_line(capsys) -> str:
    """The CLI's one error line (stderr may also carry INFO log lines before it)."""
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return errors[0]


@pytest.fixture(autouse=True)
def _fresh_log_handlers():
    # the CLI binds its log handler to the stderr of the test that called it; drop stale ones
    logging.getLogger().handlers.clear()
    yield


def _raw_index(ds: Path, kind: str) -> dict[str, int]:
    t = pq.read_table(ds / "vocab" / f"{kind}.parquet")
    return dict(zip(t["raw"].to_pylist(), t["index"].to_pylist()))


def test_known_rows_keep_pretrained_vectors(world):
    """Loaded into a model with a larger vocab: every row whose raw value the pretraining data
    knew equals the pretrained row (items, users, categorical/multi content tables); new items
    start with a zero id vector; the encoder is copied."""
    import pyarrow.parquet as pq

    from unirec_dist.config.finetune import load_finetune_config
    from unirec_dist.models.factory import build_from_config, load_retriever
    from unirec_dist.training.finetune import init_from_pretrained, plan_finetune

    cfg = load_finetune_config(FINETUNE, [f"data.path={world['b']}"])
    plan = plan_finetune(cfg, world["ckpt"])
    model = build_from_config(plan.train_cfg, plan.target.manifest)
    model.embedding.set_item_features(pq.read_table(world["b"] / "items.parquet"))
    init_from_pretrained(model, plan)
    pre, _ = load_retriever(world["ckpt"])
    got, src = model.state_dict(), pre.state_dict()

    checked = {}
    for kind, key in (("item", ITEM_W), ("user", USER_W), ("category", "embedding.content_ebc.embedding_bags.t_category.weight"),
                      ("tags", "embedding.content_ebc.embedding_bags.t_tags.weight")):
        s_idx, t_idx = _raw_index(world["a"], kind), _raw_index(world["b"], kind)
        known = [r for r in t_idx if r in s_idx]
        new = [r for r in t_idx if r not in s_idx]
        for r in known:
            assert torch.equal(got[key][t_idx[r]], src[key][s_idx[r]]), (kind, r)
        checked[kind] = (len(known), len(new))
        if kind == "item":
            for r in new:
                assert torch.count_nonzero(got[key][t_idx[r]]) == 0, r
    # B has 50 items; A's log used 39 of its 40 ids (i000..i039 minus one): 39 known, 11 new
    assert checked["item"] == (39, 11)
    assert checked["user"][0] == 50 and checked["user"][1] == 10
    assert checked["category"] == (4, 0)
    for k in src:
        if k.startswith("encoder.") or k.startswith("embedding.dense_proj."):
            assert torch.equal(got[k], src[k]), k
    # text buckets are identical across datasets (same buckets and tokenizer): whole table copied
    tk = "embedding.content_ebc.embedding_bags.t_title.weight"
    assert torch.equal(got[tk], src[tk])
    st = plan.stats
    assert st["items"] == {"rows": 50, "matched": 39, "new": 11, "overlap": 0.78}
    assert st["feature_agreement"]["category"]["agreement"] == 1.0


def test_cli_finetune_then_evaluate(world, capsys):
    out = world["tmp"] / "ft"
    rc = main(["finetune", "--from", str(world["ckpt"]), "--config", FINETUNE, f"data.path={world['b']}",
               f"trainer.out_dir={out}", "trainer.loggers=[]"])
    assert rc == 0
    ckpt = Path(capsys.readouterr().out.strip().splitlines()[-1].split("checkpoint: ")[1])
    mf = json.loads((ckpt / "manifest.json").read_text())
    assert mf["kind"] == "finetune"
    assert mf["finetune"]["source_checkpoint"] == str(world["ckpt"].resolve())
    assert mf["finetune"]["alignment"]["items"]["matched"] == 39
    b_mf = json.loads((world["b"] / "manifest.json").read_text())
    assert mf["dataset"]["vocab_hash"] == b_mf["vocab_hash"]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["monitor"] == "NDCG@10" and 0 <= summary["test"]["NDCG@10"] <= 1
    # a fine-tuned checkpoint is an ordinary checkpoint for the downstream commands
    assert main(["evaluate", "--checkpoint", str(ckpt), "--split", "test", "--k", "10"]) == 0


def test_freeze_keeps_pretrained_rows_and_trains_new_ones(world):
    from unirec_dist.config.finetune import load_finetune_config
    from unirec_dist.models.factory import load_retriever
    from unirec_dist.training.finetune import finetune

    cfg = load_finetune_config(FINETUNE, [
        f"data.path={world['b']}", f"trainer.out_dir={world['tmp'] / 'ft_frozen'}", "trainer.loggers=[]",
        "freeze.embeddings=true", "freeze.encoder=true", "trainer.max_epochs=1", "optim.lr=0.05",
        "optim.name=adamw", "optim.weight_decay=0.1"])
    ckpt = finetune(cfg, world["ckpt"])
    pre, _ = load_retriever(world["ckpt"])
    ft, _ = load_retriever(ckpt)
    s_idx, t_idx = _raw_index(world["a"], "item"), _raw_index(world["b"], "item")
    src, got = pre.state_dict(), ft.state_dict()
    for r, i in t_idx.items():
        if r in s_idx:
            assert torch.equal(got[ITEM_W][i], src[ITEM_W][s_idx[r]]), r
    new_rows = [i for r, i in t_idx.items() if r not in s_idx]
    assert torch.count_nonzero(got[ITEM_W][new_rows]) > 0      # new rows trained away from zero
    for k in src:
        if k.startswith("encoder."):
            assert torch.equal(got[k], src[k]), k


@pytest.mark.parametrize("task,keys", [("rating", ("RMSE", "MAE")), ("ctr", ("AUC", "LogLoss"))])
def test_rating_and_ctr_heads(world, task, keys):
    from unirec_dist.config.finetune import load_finetune_config
    from unirec_dist.training.finetune import finetune

    out = world["tmp"] / f"ft_{task}"
    cfg = load_finetune_config(FINETUNE, [
        f"data.path={world['b']}", f"trainer.out_dir={out}", "trainer.loggers=[]", f"task.kind={task}",
        "task.ctr.label_min_rating=4", "trainer.max_epochs=1",
        "freeze.lr_multipliers={embedding: 0.1, encoder: 0.5, head: 1.0}"])
    finetune(cfg, world["ckpt"])
    summary = json.loads((out / "metrics.json").read_text())
    for k in keys:
        assert np.isfinite(summary["best_val"][k]) and np.isfinite(summary["test"][k]), summary
    if task == "rating":
        assert summary["monitor"] == "RMSE" and summary["best_val"]["rated"] == 60
    else:
        assert summary["monitor"] == "AUC" and 0 <= summary["test"]["AUC"] <= 1
    # `unirec evaluate` reports the head's metrics too: the figures the run wrote for its test split
    report = out / "eval.json"
    assert main(["evaluate", "--checkpoint", summary["checkpoint"], "--k", "10", "--out", str(report)]) == 0
    got = json.loads(report.read_text())["pointwise"]
    for k in keys:
        assert got[k] == pytest.approx(summary["test"][k], rel=1e-6), (k, got, summary["test"])


def test_align_by_title_when_ids_differ(world, capsys):
    """Raw ids renamed (i001 -> j001) but the titles are the same: raw_id alignment is refused
    (exit 2, one line, nothing written); column alignment on the title finds the items."""
    ds = _prepare_variant(world["tmp"] / "renamed", seed=3, n_items=40, rename="j")
    out = world["tmp"] / "ft_renamed"
    rc = main(["finetune", "--from", str(world["ckpt"]), "--config", FINETUNE, f"data.path={ds}",
               f"trainer.out_dir={out}"])
    err = _error_line(capsys)
    assert rc == 2
    assert "cannot be aligned" in err and "init.align=column" in err
    assert not out.exists()
    from unirec_dist.config.finetune import load_finetune_config
    from unirec_dist.training.finetune import plan_finetune

    cfg = load_finetune_config(FINETUNE, [f"data.path={ds}", "init.align=column", "init.align_column=[title]",
                                          "init.align_users=false"])
    plan = plan_finetune(cfg, world["ckpt"])
    assert plan.stats["items"]["matched"] == 39 and plan.stats["items"]["rows"] == 40
    assert plan.stats["users"]["matched"] == 0
    assert plan.stats["feature_agreement"]["category"]["agreement"] == 1.0


def test_same_ids_naming_different_items_exit_2(world, capsys):
    """Same raw ids, but the item table says they are other items (categories disagree): refused."""
    ds = _prepare_variant(world["tmp"] / "shuffled", seed=4, n_items=40, reverse_items=True)
    out = world["tmp"] / "ft_shuffled"
    rc = main(["finetune", "--from", str(world["ckpt"]), "--config", FINETUNE, f"data.path={ds}",
               f"trainer.out_dir={out}"])
    err = _error_line(capsys)
    assert rc == 2
    assert "disagree on feature 'category'" in err and "different items" in err
    assert not out.exists()


BLOCK_NETWORK = '''import socket


def _blocked(*args, **kwargs):
    raise OSError("network blocked by the test")


socket.socket.connect = socket.socket.connect_ex = _blocked
socket.create_connection = socket.getaddrinfo = _blocked
'''


def test_finetune_by_title_offline_without_raw_files(world, tmp_path):
    """Column alignment needs only the prepared datasets: with every raw file of both datasets
    gone, an empty data cache and sockets that raise, `unirec finetune` aligns by title and trains."""
    import os
    import shutil
    import subprocess
    import sys

    ds = _prepare_variant(tmp_path / "renamed", seed=5, n_items=40, rename="k")
    shutil.rmtree(tmp_path / "renamed" / "raw")
    raw_a = world["a"].parent / "raw"
    hidden = world["tmp"] / "raw-a-hidden"
    raw_a.rename(hidden)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCK_NETWORK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO)]),
           "UNIREC_DATA": str(tmp_path / "unirec-data")}      # an empty MovieLens cache
    out = tmp_path / "ft"
    try:
        r = subprocess.run([sys.executable, "-m", "unirec_dist", "finetune", "--from", str(world["ckpt"]),
                            "--config", FINETUNE, f"data.path={ds}", "init.align=column", "init.align_column=[title]",
                            "init.align_users=false", f"trainer.out_dir={out}", "trainer.max_epochs=1",
                            "trainer.limit_train_batches=2", "trainer.loggers=[]"],
                           env=env, capture_output=True, text=True, timeout=300)
    finally:
        hidden.rename(raw_a)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "metrics.json").read_text())
    items = summary["alignment"]["items"]
    assert summary["alignment"]["mode"] == "column" and items["matched"] >= 0.9 * items["rows"], items
    assert not (tmp_path / "unirec-data").exists()


def test_transfer_bench_names_its_target_and_refuses_low_overlap_in_one_line(world, capsys, monkeypatch):
    """bench/transfer.py takes any prepared target and alignment spec; too little overlap is one
    `error:` line and exit 2, after it printed which target it ran."""
    import runpy
    import sys

    ds = _prepare_variant(world["tmp"] / "bench-renamed", seed=6, n_items=40, rename="m")
    monkeypatch.setattr(sys, "argv", ["transfer.py", "--out", str(world["tmp"] / "bench"), "--source", str(world["a"]),
                                      "--target", str(ds), "--pretrained", str(world["ckpt"]), "--align", "raw_id",
                                      "--min-overlap", "0.5", "--fractions", "1.0", "--seeds", "1", "--epochs", "1"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / "bench" / "transfer.py"), run_name="__main__")
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert f"target: synthetic ({ds})" in captured.out
    err = [ln for ln in captured.err.strip().splitlines() if ln.startswith("error: ")]
    assert len(err) == 1 and "below init.min_overlap 50%" in err[0] and "Traceback" not in captured.err


def test_finetune_a_model_with_a_time_bias(tmp_path, capsys):
    """A pretrained HSTU with the time bias fine-tunes like any model: the training batches carry
    each event's time (the encoder refuses batches without them), the time weights move, and the
    fine-tuned checkpoint evaluates. A target dataset without event times: one line, exit 2."""
    import shutil

    from tests.integration.test_export import random_model
    from tests.integration.test_time_serving import HSTU_TIME
    from unirec_dist.models.factory import load_retriever

    ds, ckpt = random_model(tmp_path, HSTU_TIME, n_users=40, n_items=30)
    out = tmp_path / "ft"
    rc = main(["finetune", "--from", str(ckpt), "--config", FINETUNE, f"data.path={ds}",
               f"trainer.out_dir={out}", "trainer.loggers=[]"])
    assert rc == 0
    tuned = Path(capsys.readouterr().out.strip().splitlines()[-1].split("checkpoint: ")[1])
    mf = json.loads((tuned / "manifest.json").read_text())
    assert mf["config"]["model"]["encoder"]["time_bias"] is True
    before, after = (load_retriever(c)[0].state_dict() for c in (ckpt, tuned))
    keys = [k for k in after if "rel_time" in k]
    assert keys and all(not torch.equal(before[k], after[k]) for k in keys)   # the time weights were trained
    assert 0 <= json.loads((out / "metrics.json").read_text())["test"]["NDCG@10"] <= 1
    # the same fine-tuning onto a dataset prepared in row order (no real event times)
    row = tmp_path / "row"
    shutil.copytree(ds, row)
    m = json.loads((row / "manifest.json").read_text())
    m["config"]["split"]["order"] = "row"
    (row / "manifest.json").write_text(json.dumps(m))
    rc = main(["finetune", "--from", str(ckpt), "--config", FINETUNE, f"data.path={row}",
               f"trainer.out_dir={tmp_path / 'ft-row'}", "trainer.loggers=[]"])
    assert rc == 2
    assert "model.encoder.time_bias" in _error_line(capsys) and not (tmp_path / "ft-row" / "checkpoints").exists()
    # evaluating or recommending with it on such a dataset: the same one line, not a traceback
    for cmd in (["evaluate", "--split", "test"], ["recommend", "--all-users", "--out", str(tmp_path / "recs.parquet")]):
        assert main([*cmd, "--checkpoint", str(tuned), "--data", str(row), "--k", "5"]) == 2
        assert "model.encoder.time_bias" in _error_line(capsys)
    assert not (tmp_path / "recs.parquet").exists()
