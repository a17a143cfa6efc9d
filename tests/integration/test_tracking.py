"""trainer.loggers: [mlflow]: a debug run read back through MLflow's own client (params, metrics,
final metrics), and a tracking server that does not answer refused before any work."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.synthetic import prepared_dataset
from unirec_dist.cli import main

REPO = Path(__file__).resolve().parents[2]
DEBUG = str(REPO / "configs/pretrain/debug.yaml")


def test_train_run_read_back_through_mlflow(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    ds = prepared_dataset(tmp_path / "data")
    out = tmp_path / "run"
    rc = main(["train", "--config", DEBUG, f"data.path={ds}", f"trainer.out_dir={out}",
               "trainer.loggers=[csv,mlflow]"])
    assert rc == 0
    client = mlflow.MlflowClient((out / "mlruns").as_uri())
    exp = client.get_experiment_by_name("debug")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    params = run.data.params
    vocab_hash = json.loads((Path(ds) / "manifest.json").read_text())["vocab_hash"]
    assert params["dataset/vocab_hash"] == vocab_hash
    assert params["config/model/encoder/kind"] == "sasrec" and params["config/data/max_len"] == "20"
    summary = json.loads((out / "metrics.json").read_text())
    m = run.data.metrics
    assert m["final/best_val_NDCG@10".replace("@", "")] == pytest.approx(summary["best_val_NDCG@10"])
    assert m["final/last_val/HR10"] == pytest.approx(summary["last_val"]["HR@10"])
    # per-epoch validation history, one point per epoch
    history = client.get_metric_history(run.info.run_id, "val/NDCG10")
    assert len(history) == summary["epochs"]
    assert (out / "logs" / "metrics.csv").is_file()


def test_unreachable_tracking_server_is_one_line_before_training(tmp_path, capsys):
    with socket.socket() as s:   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    rc = main(["train", "--config", DEBUG, f"data.path={prepared_dataset(tmp_path / 'data')}",
               f"trainer.out_dir={out}", "trainer.loggers=[mlflow]", f"trainer.mlflow_uri=http://127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().splitlines() == [f"error: trainer.mlflow_uri: the MLflow server http://127.0.0.1:{port} "
                                        "does not answer (Connection refused)"]
    assert not out.exists()

