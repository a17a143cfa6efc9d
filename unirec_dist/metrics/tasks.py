"""The metrics of every task a model was trained for, on a query table (valid or test split).

    task_metrics(model, queries, train_cfg, n_items)  retrieval HR/NDCG@K (full ranking), rating
                                                      RMSE/MAE, CTR AUC/log-loss: each active task's
    pointwise_metrics                                 the rating and CTR heads' metrics alone
    checkpoint_pointwise_metrics                      those of a loaded checkpoint (`unirec evaluate`)
    monitor_of(train_cfg) -> (metric, mode)           the metric that ranks checkpoints of a config
    evaluate_checkpoint(checkpoint, split)            task_metrics of a training checkpoint

Queries are the prepared dataset's split rows (history, targets, target_ratings); the pointwise
tasks score each query's FIRST target. Holds one batch of model states at a time.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from unirec_dist.config.loader import from_dict
from unirec_dist.config.train import TrainConfig
from unirec_dist.data.batch import iter_query_batches
from unirec_dist.data.dataset import PreparedDataset
from unirec_dist.metrics.evaluate import evaluate_table
from unirec_dist.metrics.pointwise import auc, log_loss, mae, rmse
from unirec_dist.models.factory import load_retriever


def _first(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(Q,) float64: each list's first value, nan for an empty or null list."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False)
    firsts = pc.list_flatten(pc.list_slice(col, 0, 1)).to_numpy(zero_copy_only=False).astype(np.float64)
    out = np.full(len(lengths), np.nan)
    out[lengths > 0] = firsts
    return out


@torch.no_grad()
def _pointwise_states(model, queries, batch_size: int, max_len: int):
    """Per query: (hist (B, L, D), lengths (B,), state after the history (B, D), first target (B,))."""
    for b in iter_query_batches(queries, batch_size, max_len):
        items, lengths = model.embed_sequences(b.seq)
        states = model.encode(items, lengths.clamp(min=1), b.users)
        h = states[torch.arange(states.shape[0]), (lengths - 1).clamp(min=0)]
        yield items, lengths, h, b.targets[:, 0]


@torch.no_grad()
def rating_metrics(model, queries, batch_size: int = 512) -> dict[str, float]:
    """RMSE/MAE of the rating head on each query's first target (queries with a target rating)."""
    if "target_ratings" not in queries.column_names:
        return {}
    y = _first(queries["target_ratings"])
    preds = []
    for _, _, h, tgt in _pointwise_states(model, queries, batch_size, model.max_len):
        preds.append(model.heads["rating"](h, model.embedding.item_vectors(tgt)).float().numpy())
    p = np.concatenate(preds) if preds else np.zeros(0)
    ok = ~np.isnan(y)
    return {"RMSE": rmse(p[ok], y[ok]), "MAE": mae(p[ok], y[ok]), "rated": int(ok.sum())}


@torch.no_grad()
def ctr_metrics(model, queries, ctr_cfg, n_items: int, batch_size: int = 512, seed: int = 0) -> dict[str, float]:
    """AUC/log-loss of the CTR head: each query's first target (label 1, or rating >=
    label_min_rating) against `num_negatives` uniformly drawn items (label 0, fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    thr = ctr_cfg.label_min_rating
    ratings = _first(queries["target_ratings"]) if (thr is not None and "target_ratings" in queries.column_names) else None
    scores, labels = [], []
    start = 0
    for items, lengths, h, tgt in _pointwise_states(model, queries, batch_size, model.max_len):
        B, L, _ = items.shape
        C = 1 + ctr_cfg.num_negatives
        neg = torch.randint(1, n_items + 1, (B, 1, C - 1), generator=g)
        cand_ids = torch.cat([tgt[:, None, None], neg], dim=-1)                         # (B, 1, C)
        cand = model.embedding.item_vectors(cand_ids.reshape(-1)).view(B, 1, C, -1)
        visible = (torch.arange(L)[None, None, :] < lengths[:, None, None])             # (B, 1, L)
        logits = model.heads["ctr"](items, visible, h[:, None, :], cand)[:, 0]          # (B, C)
        lab = torch.zeros(B, C)
        if ratings is not None:
            lab[:, 0] = torch.from_numpy((ratings[start:start + B] >= thr).astype(np.float32))
        else:
            lab[:, 0] = 1.0
        start += B
        scores.append(logits.reshape(-1).float().numpy())
        labels.append(lab.reshape(-1).numpy())
    s = np.concatenate(scores) if scores else np.zeros(0)
    y = np.concatenate(labels) if labels else np.zeros(0)
    return {"AUC": auc(s, y), "LogLoss": log_loss(1.0 / (1.0 + np.exp(-s)), y)}


def pointwise_metrics(model, queries, train_cfg: TrainConfig, n_items: int, batch_size: int = 512,
                      seed: int = 0) -> dict[str, float]:
    """The rating and CTR metrics of the config's active tasks ({} for a retrieval-only config)."""
    tasks = train_cfg.task.active_tasks
    out: dict[str, float] = {}
    if "rating" in tasks:
        out.update(rating_metrics(model, queries, batch_size))
    if "ctr" in tasks:
        out.update(ctr_metrics(model, queries, train_cfg.task.ctr, n_items, batch_size, seed))
    return out


def checkpoint_pointwise_metrics(model, manifest: dict[str, Any], dataset: Any, split: str,
                                 batch_size: int = 512) -> dict[str, float]:
    """`pointwise_metrics` of a loaded checkpoint (its manifest's config and seed) on the queries of
    `dataset`'s `split` that have a target: the same figures `evaluate_checkpoint` gives."""
    where = f"{manifest.get('path', 'checkpoint')}/manifest.json config"
    cfg = from_dict(TrainConfig, manifest["config"], where=where)
    if not {"rating", "ctr"} & set(cfg.task.active_tasks):
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
    tasks = train_cfg.task.active_tasks
    was = model.training
    model.eval()
    try:
        out: dict[str, float] = {}
        if "retrieval" in tasks:
            m = evaluate_table(model, queries, n_items, ks=ks, mask_seen=bool(mask_seen), batch_size=batch_size,
                               progress=False)
            out.update({k: float(v) for k, v in m.items()})
        out.update(pointwise_metrics(model, queries, train_cfg, n_items, batch_size, seed))
        return out
    finally:
        model.train(was)


def monitor_of(train_cfg: TrainConfig) -> tuple[str, str]:
    """(metric, "max" or "min"): the first of NDCG@10, RMSE, AUC that the config's tasks report."""
    tasks = train_cfg.task.active_tasks
    if "retrieval" in tasks:
        return "NDCG@10", "max"
    if "rating" in tasks:
        return "RMSE", "min"
    return "AUC", "max"


def evaluate_checkpoint(checkpoint: Any, split: str = "test", ks=(10,), dataset=None,
                        mask_seen: bool = False) -> dict[str, float]:
    """Task metrics (retrieval HR/NDCG@K full ranking, history items masked if `mask_seen`;
    RMSE/MAE; AUC/log-loss) of a training or fine-tuning checkpoint on its dataset's `split`."""
    model, manifest = load_retriever(checkpoint)
    ds = PreparedDataset.open(dataset or manifest["dataset"]["path"])
    cfg = from_dict(TrainConfig, manifest["config"], where=f"{checkpoint}/manifest.json config")
    queries = _with_targets(ds.table(split))
    return task_metrics(model, queries, cfg, ds.n_items, ks=ks, seed=cfg.trainer.seed, mask_seen=mask_seen)
