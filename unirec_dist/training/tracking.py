"""Experiment tracking with MLflow (`trainer.loggers: [mlflow]`), through Lightning's MLFlowLogger.

Where runs go: `trainer.mlflow_uri`, a tracking server (`http(s)://host:port`) or a local store
(`file:PATH`); by default the local store `file:<trainer.out_dir>/mlruns`, so a run needs no server.
Experiment = the config's `name`, run name = the out_dir's folder name. Logged: the resolved
config and the dataset's name, path and vocab hash as params (at the start), Lightning's logged
metrics as they come (MLflow drops the `@` of `NDCG@10`: `val/NDCG10`), and the numbers of the
run's summary (metrics.json) as `final/...` metrics at the end. Read a run back with
`mlflow.MlflowClient(uri)` or `mlflow ui --backend-store-uri URI`.

A server that does not answer is refused before any work starts (`check_tracking`), not at the
end of training.
"""
from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from unirec_dist.config.train import TrainConfig
from unirec_dist.errors import ConfigError


def tracking_uri(cfg: TrainConfig) -> str:
    t = cfg.trainer
    return t.mlflow_uri or (Path(t.out_dir).resolve() / "mlruns").as_uri()


def check_tracking(cfg: TrainConfig, timeout_s: float = 3.0) -> None:
    """With the mlflow logger on: mlflow is importable and a tracking server answers (a TCP
    connect within `timeout_s`; MLflow's own client retries for minutes before it gives up)."""
    if "mlflow" not in cfg.trainer.loggers:
        return
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError("trainer.loggers: mlflow needs the mlflow-skinny package (pip install mlflow-skinny)") from None
    uri = tracking_uri(cfg)
    url = urlparse(uri)
    if url.scheme not in ("http", "https"):
        return
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            pass
    except OSError as e:
        raise ConfigError(f"trainer.mlflow_uri: the MLflow server {uri} does not answer ({e.strerror or e})") from None


def mlflow_logger(cfg: TrainConfig, dataset: dict[str, Any]):
    """Lightning's MLFlowLogger for this run, its params (config, dataset identity) logged."""
    from lightning.pytorch.loggers import MLFlowLogger

    from unirec_dist.config.loader import to_dict

    uri = tracking_uri(cfg)
    if uri.startswith("file:"):
        # MLflow 3 refuses its file store unless asked for explicitly; it is the embedded default
        # here because it needs no server and no database driver
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    warnings.filterwarnings("ignore", message=".*MLFlow only allows.*")
    logger = MLFlowLogger(experiment_name=cfg.name, run_name=Path(cfg.trainer.out_dir).name, tracking_uri=uri)
    logger.log_hyperparams({"config": to_dict(cfg),
                            "dataset": {k: dataset.get(k) for k in ("name", "path", "vocab_hash")}})
    return logger


def log_final_metrics(loggers: list[Any], summary: dict[str, Any]) -> None:
    """The numbers of a run's summary (nested dicts flattened) as `final/<key>` metrics of every
    MLflow logger in `loggers`."""
    from lightning.pytorch.loggers import MLFlowLogger

    flat: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[prefix] = float(value)

    walk("final", summary)
    for lg in loggers:
        if isinstance(lg, MLFlowLogger) and flat:
            lg.log_metrics(flat)
