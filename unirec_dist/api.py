"""The Python API in one place: the functions the `unirec` subcommands call, re-exported.

    from unirec_dist import api
    ds_dir = api.prepare(api.load_dataset_config("configs/datasets/ml-100k.yaml"), "data/prepared/ml-100k")
    ckpt = api.train(api.load_train_config("configs/pretrain/ml-100k-sasrec.yaml", ["trainer.max_epochs=2"]))
    rec = api.Recommender.from_bundle(api.export_bundle(ckpt, "bundle/"))

Every stage, and the subcommand that makes the same call:
  fetch_movielens / fetch_recbole_ml100k   `unirec data fetch`
  load_dataset_config + prepare           `unirec prepare`         -> prepared dataset dir
  load_train_config + train               `unirec train`           -> checkpoint pointer
  load_pretrain_config + pretrain         `unirec pretrain`        -> checkpoint pointer
  load_finetune_config + finetune         `unirec finetune`        -> checkpoint pointer
  load_retriever / popularity + evaluate  `unirec evaluate`        -> report dict (format_table prints it)
  recommend (+ all_users)                 `unirec recommend`       -> Arrow table user, rank, item, score
  export_bundle                           `unirec export`          -> bundle dir
  Recommender, create_app, serve_in_thread / serve_in_process   `unirec serve`, `unirec explain`
  write_report                            `unirec report`          -> index.html
Nothing here has logic of its own; names resolve lazily (importing this module imports neither
torch nor Ray). Note that train/finetune set torch's CPU threads for the whole process
(`trainer.threads`, default 2).
"""
from __future__ import annotations

import importlib
from typing import Any

# name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    "fetch_movielens": ("unirec_dist.data.movielens", "fetch"),
    "fetch_recbole_ml100k": ("unirec_dist.data.movielens", "fetch_recbole_ml100k"),
    "DatasetConfig": ("unirec_dist.config.dataset", "DatasetConfig"),
    "load_dataset_config": ("unirec_dist.config.dataset", "load_dataset_config"),
    "prepare": ("unirec_dist.data.prepare", "prepare"),
    "PreparedDataset": ("unirec_dist.data.dataset", "PreparedDataset"),
    "load_train_config": ("unirec_dist.config.train", "load_train_config"),
    "train": ("unirec_dist.training.train", "train"),
    "load_pretrain_config": ("unirec_dist.config.distributed", "load_pretrain_config"),
    "pretrain": ("unirec_dist.training.pretrain", "pretrain"),
    "load_finetune_config": ("unirec_dist.config.finetune", "load_finetune_config"),
    "finetune": ("unirec_dist.training.finetune", "finetune"),
    "load_retriever": ("unirec_dist.training.build", "load_retriever"),
    "popularity": ("unirec_dist.metrics.evaluate", "popularity"),
    "evaluate": ("unirec_dist.metrics.evaluate", "evaluate"),
    "format_table": ("unirec_dist.metrics.evaluate", "format_table"),
    "recommend": ("unirec_dist.serving.topn", "recommend"),
    "all_users": ("unirec_dist.serving.topn", "all_users"),
    "export_bundle": ("unirec_dist.checkpoint.export", "export_bundle"),
    "Recommender": ("unirec_dist.serving.recommender", "Recommender"),
    "create_app": ("unirec_dist.serving.app", "create_app"),
    "serve_in_thread": ("unirec_dist.serving.server", "serve_in_thread"),
    "serve_in_process": ("unirec_dist.serving.server", "serve_in_process"),
    "write_report": ("unirec_dist.report", "write_report"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'unirec_dist.api' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    return getattr(importlib.import_module(module), attr)


def __dir__() -> list[str]:
    return __all__
