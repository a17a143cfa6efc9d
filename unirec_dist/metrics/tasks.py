"""The metrics of every task a model was trained for, on a query table (valid or test split).

    task_metrics(model, queries, train_cfg, n_items)  each active task's: retrieval HR/NDCG@K (full
                                                      ranking), rating RMSE/MAE, CTR AUC/log-loss
    pointwise_metrics                                 the heads' own metrics alone (each task's
                                                      Objective.metrics, tasks/)
    checkpoint_pointwise_metrics                      those of a loaded checkpoint (`unirec evaluate`)
    monitor_of(train_cfg) -> (metric, mode)           the metric that ranks checkpoints of a config
    evaluate_checkpoint(checkpoint, split)            task_metrics of a training checkpoint

Queries are the prepared dataset's split rows (history, targets, target_ratings); the pointwise
tasks score each query's FIRST target. Holds one batch of model states at a time.
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from unirec_dist.config.loader import from_dict
from unirec_dist.config.train import TrainConfig
from unirec_dist.data.dataset import PreparedDataset
from unirec_dist.metrics.evaluate import evaluate_table
from unirec_dist.models.factory import load_retriever


def pointwise_metrics(model, queries, train_cfg: TrainConfig, n_items: int, batch_size: int = 512,
                      seed: int = 0) -> dict[str, float]:
    """The heads' metrics of the config's active tasks (rating, CTR; {} for a retrieval-only config)."""
    out: dict[str, float] = {}
    for name, objective in train_cfg.task.objectives().items():
        out.update(objective.metrics(train_cfg.task.config(name), model, queries, n_items, batch_size, seed))
    return out


def checkpoint_pointwise_metrics(model, manifest: dict[str, Any], dataset: Any, split: str,
                                 batch_size: int = 512) -> dict[str, float]:
    """`pointwise_metrics` of a loaded checkpoint (its manifest's config and seed) on the queries of
    `dataset`'s `split` that have a target: the same figures `evaluate_checkpoint` gives."""
    where = f"{manifest.get('path', 'checkpoint')}/manifest.json config"
    cfg = from_dict(TrainConfig, manifest["config"], where=where)
    if all(o.ranks_items for o in cfg.task.objectives().values()):
        return {}
    queries = _with_targets(dataset.table(split))
    was = model.training
    model.eval()
    try:
        return pointwise_metrics(model, queries, cfg, dataset.n_items, batch_size, cfg.trainer.seed)
    finally:
        model.train(was)


def _with_targets(queries: pa.Table) -> pa.Table:
    return queries.filter(pc.greater(pc.list_value_length(queries["targets"]), 0))


def task_metrics(model, queries, train_cfg: TrainConfig, n_items: int, ks=(10,), batch_size: int = 512,
                 seed: int = 0, mask_seen: bool | None = None) -> dict[str, float]:
    """The metrics of every active task on a query table (valid or test). Retrieval ranks the full
    catalogue; history items are masked if `mask_seen` (None: the config's trainer.val_mask_seen)."""
    if mask_seen is None:
        mask_seen = train_cfg.trainer.val_mask_seen
    was = model.training
    model.eval()
    try:
        out: dict[str, float] = {}
        if any(o.ranks_items for o in train_cfg.task.objectives().values()):
            m = evaluate_table(model, queries, n_items, ks=ks, mask_seen=bool(mask_seen), batch_size=batch_size,
                               progress=False)
            out.update({k: float(v) for k, v in m.items()})
        out.update(pointwise_metrics(model, queries, train_cfg, n_items, batch_size, seed))
        return out
    finally:
        model.train(was)


def monitor_of(train_cfg: TrainConfig) -> tuple[str, str]:
    """(metric, "max" or "min"): see TaskSection.monitor (NDCG@10, RMSE or AUC for the built-in tasks)."""
    return train_cfg.task.monitor()


def evaluate_checkpoint(checkpoint: Any, split: str = "test", ks=(10,), dataset=None,
                        mask_seen: bool = False) -> dict[str, float]:
    """Task metrics (retrieval HR/NDCG@K full ranking, history items masked if `mask_seen`;
    RMSE/MAE; AUC/log-loss) of a training or fine-tuning checkpoint on its dataset's `split`."""
    model, manifest = load_retriever(checkpoint)
    ds = PreparedDataset.open(dataset or manifest["dataset"]["path"])
    cfg = from_dict(TrainConfig, manifest["config"], where=f"{checkpoint}/manifest.json config")
    queries = _with_targets(ds.table(split))
    return task_metrics(model, queries, cfg, ds.n_items, ks=ks, seed=cfg.trainer.seed, mask_seen=mask_seen)
