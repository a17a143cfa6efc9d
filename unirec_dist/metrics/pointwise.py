"""Pointwise metrics for the rating and CTR heads (numpy, exact, no sampling).

    rmse(pred, target), mae(pred, target)      rating regression
    auc(scores, labels)                        ROC AUC, ties counted as 1/2 (Mann-Whitney U)
    log_loss(probs, labels, eps=1e-7)          mean binary cross-entropy, probs clipped to [eps, 1-eps]

All take 1-d array-likes of equal length; empty inputs give nan (and AUC with only one class
present gives nan: it is undefined).
"""
from __future__ import annotations

import numpy as np


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
