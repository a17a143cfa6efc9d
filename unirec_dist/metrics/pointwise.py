"""Pointwise metrics for the rating and CTR heads (numpy, exact, no sampling).

    rmse(pred, target), mae(pred, target)      rating regression
    auc(scores, labels)                        ROC AUC, ties counted as 1/2 (Mann-Whitney U)
    log_loss(probs, labels, eps=1e-7)          mean binary cross-entropy, probs clipped to [eps, 1-eps]

All take 1-d array-likes of equal length; empty inputs give nan (and AUC with only one class
present gives nan: it is undefined). The tasks' heads are scored on a query table with

    first_values(list column) -> (Q,)          each query's first target (rating), nan if none
    pointwise_states(model, queries, ...)      per batch: the history and the state after it
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from unirec_dist.data.batch import iter_query_batches


def first_values(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(Q,) float64: each list's first value, nan for an empty or null list."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False)
    firsts = pc.list_flatten(pc.list_slice(col, 0, 1)).to_numpy(zero_copy_only=False).astype(np.float64)
    out = np.full(len(lengths), np.nan)
    out[lengths > 0] = firsts
    return out


@torch.no_grad()
def pointwise_states(model, queries, batch_size: int, max_len: int):
    """Per query: (hist (B, L, D), lengths (B,), state after the history (B, D), first target (B,))."""
    for b in iter_query_batches(queries, batch_size, max_len):
        items, lengths = model.embed_sequences(b.seq)
        states = model.encode(items, lengths.clamp(min=1), b.users)
        h = states[torch.arange(states.shape[0]), (lengths - 1).clamp(min=0)]
        yield items, lengths, h, b.targets[:, 0]


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"length mismatch: {a.shape[0]} vs {b.shape[0]}")
    return a, b


def rmse(pred, target) -> float:
    p, t = _pair(pred, target)
    return float(np.sqrt(np.mean((p - t) ** 2))) if p.size else float("nan")


def mae(pred, target) -> float:
    p, t = _pair(pred, target)
    return float(np.mean(np.abs(p - t))) if p.size else float("nan")


def auc(scores, labels) -> float:
    """P(score of a random positive > score of a random negative), ties 1/2; via average ranks."""
    s, y = _pair(scores, labels)
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    # average rank (1-based) of each tie group
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    ends = np.r_[starts[1:], len(ss)]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def log_loss(probs, labels, eps: float = 1e-7) -> float:
    p, y = _pair(probs, labels)
    if p.size == 0:
        return float("nan")
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
