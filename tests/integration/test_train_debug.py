"""End to end: `unirec train` with the debug config on a dataset written by the real `prepare`,
then `unirec evaluate` on its checkpoint; and the debug recipe learns a learnable pattern."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.synthetic import prepared_dataset
from tests.unit.test_models import make_prepared
from unirec_dist.cli import main

REPO = Path(__file__).resolve().parents[2]
DEBUG = str(REPO / "configs/pretrain/debug.yaml")


def test_train_then_evaluate_cli(tmp_path, capsys):
    ds = prepared_dataset(tmp_path / "data")
    out = tmp_path / "run"
    rc = main(["train", "--config", DEBUG, f"data.path={ds}", f"trainer.out_dir={out}",
               "trainer.loggers=[csv,tensorboard]"])
    assert rc == 0
    printed = capsys.readouterr().out
    ckpt = Path(printed.strip().splitlines()[-1].split("checkpoint: ")[1])
    assert ckpt.parent == out / "checkpoints" and (ckpt / "manifest.json").is_file()
    mf = json.loads((ckpt / "manifest.json").read_text())
    ds_mf = json.loads((Path(ds) / "manifest.json").read_text())
    assert mf["kind"] == "train" and mf["dataset"]["vocab_hash"] == ds_mf["vocab_hash"]
    assert mf["config"]["model"]["encoder"]["kind"] == "sasrec"
    assert (out / "logs" / "metrics.csv").is_file() and (out / "metrics.json").is_file()
    assert any((out / "logs").glob("tb/events.*"))
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--split", "valid", "--k", "10",
               "--out", str(tmp_path / "eval")])
    assert rc == 0


@pytest.mark.parametrize("kind", ["sasrec", "hstu"])
def test_debug_recipe_learns_a_pattern(tmp_path, kind):
    """Sequences follow item i -> i % 30 + 1: a trained encoder must rank the next item in the
    top 10 far more often than chance (10/30)."""
    from unirec_dist.config.loader import load_config
    from unirec_dist.config.train import TrainConfig
    from unirec_dist.training.train import train

    ds = make_prepared(tmp_path / "ds", n_users=48, seq_len=12)
    cfg = load_config(TrainConfig, DEBUG, [
        f"data.path={ds}", f"trainer.out_dir={tmp_path / 'run'}", "trainer.max_epochs=8",
        "trainer.limit_train_batches=1.0", "data.batch_size=16", "data.max_len=12",
        # another encoder than the YAML's: replace the whole section (its keys are per encoder)
        "model.encoder.num_heads=2" if kind == "sasrec" else
        f"model.encoder={{kind: {kind}, num_blocks: 1, num_heads: 2, dqk: 8, dv: 8, dropout: 0.1}}",
        "trainer.val_every_n_epochs=8", "trainer.checkpoint_every_n_epochs=0", "optim.lr=0.01"])
    train(cfg)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["last_val"]["HR@10"] > 0.6, m
