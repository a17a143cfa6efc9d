"""optim.tables: the embedding-table optimizer is named in the config, resolved per device, and an
impossible choice is one line (issue 12)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.synthetic import prepared_dataset
from unirec_dist.cli import main
from unirec_dist.config.distributed import load_pretrain_config
from unirec_dist.embeddings.sharding import validate_table_optimizer
from unirec_dist.errors import ConfigError

DEBUG = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "debug.yaml"


@pytest.fixture(autouse=True)
def _fresh_log_handlers():
    # the CLI binds its log handler to the stderr of the test that called it; drop stale ones
    logging.getLogger().handlers.clear()
    yield


def test_optim_tables_resolves_per_device_and_refuses_adam_on_cpu():
    cfg = load_pretrain_config(DEBUG)
    assert cfg.optim.tables == "auto"
    opt = cfg.distributed.table_optimizer
    assert opt.resolve(cfg.optim.tables, "cpu", cfg.optim.lr) == ("adagrad", 0.05)
    assert opt.resolve(cfg.optim.tables, "cuda", cfg.optim.lr) == ("adam", cfg.optim.lr)
    cfg = load_pretrain_config(DEBUG, ["optim.tables=rowwise_adagrad"])
    kind, _ = cfg.distributed.table_optimizer.resolve(cfg.optim.tables, "cpu", cfg.optim.lr)
    validate_table_optimizer(kind, "cpu")
    cfg = load_pretrain_config(DEBUG, ["optim.tables=adam"])
    kind, _ = cfg.distributed.table_optimizer.resolve(cfg.optim.tables, "cpu", cfg.optim.lr)
    with pytest.raises(ConfigError, match=r"^optim.tables: 'adam' is not supported on cpu for sharded tables"):
        validate_table_optimizer(kind, "cpu")
    with pytest.raises(ConfigError, match="optim.tables"):
        load_pretrain_config(DEBUG, ["optim.tables=lamb"])


def test_train_refuses_a_table_optimizer_it_would_not_use(tmp_path, capsys):
    data = prepared_dataset(tmp_path)
    rc = main(["train", "--config", str(DEBUG), f"data.path={data}", f"trainer.out_dir={tmp_path / 'run'}",
               "optim.tables=adagrad"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "optim.tables: 'adagrad' applies to sharded tables" in err[0]
    assert not (tmp_path / "run").exists()
