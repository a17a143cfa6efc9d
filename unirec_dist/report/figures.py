"""The report's figures: one PNG each, drawn with matplotlib's Agg backend (no display, no server).

Each function writes `path` and returns the caption's facts (a short string) for the page.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from unirec_dist.report.inputs import Epochs

DPI = 100
# NDCG@10 by history length: bucket upper bounds (items in the user's history)
LENGTH_EDGES = (5, 10, 20, 50, 100, 200)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")   # file output only; never a window or a display server
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)


def gini(values: np.ndarray) -> float:
    """Gini index of a non-negative distribution (0: every item recommended equally often, 1: one
    item takes every slot); the usual closed form over the sorted values."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    n, total = v.size, v.sum()
    if n == 0 or total == 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ v / (n * total))


def training_curves(epochs: Epochs, monitor: tuple[str, str], path: Path) -> str:
    """Train loss per epoch (left) and every validation metric per epoch (right), the best epoch
    by `monitor` marked on both."""
    plt = _pyplot()
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    x = epochs.epoch
    name, mode = monitor
    best = None
    if name in epochs.val and not np.all(np.isnan(epochs.val[name])):
        v = epochs.val[name]
        best = int(x[np.nanargmax(v) if mode == "max" else np.nanargmin(v)])
    ok = ~np.isnan(epochs.loss)
    if ok.any():
        ax_loss.plot(x[ok], epochs.loss[ok], marker="o", color="tab:blue")
    else:
        ax_loss.text(0.5, 0.5, "no train loss logged", ha="center", va="center", transform=ax_loss.transAxes)
    ax_loss.set(title="training loss per epoch", xlabel="epoch", ylabel="loss")
    for metric, values in sorted(epochs.val.items()):
        ok = ~np.isnan(values)
        ax_val.plot(x[ok], values[ok], marker="o", label=metric)
    if epochs.val:
        ax_val.legend(loc="best", fontsize="small")
    else:
        ax_val.text(0.5, 0.5, "no validation logged", ha="center", va="center", transform=ax_val.transAxes)
    ax_val.set(title="validation metrics per epoch", xlabel="epoch", ylabel="value")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best is not None:
            ax.axvline(best, color="tab:red", linestyle="--", label=None)
    if best is not None:
        i = int(np.where(x == best)[0][0])
        ax_val.annotate(f"best epoch {best}\n{name} {epochs.val[name][i]:.4f}", xy=(best, epochs.val[name][i]),
                        xytext=(-90 if best == x[-1] else 8, -30), textcoords="offset points", color="tab:red",
                        fontsize="small")
    _save(fig, path)
    if best is None:
        return f"{len(x)} epochs; no {name} logged, so no best epoch is marked"
    return f"{len(x)} epochs; best epoch {best} by validation {name} ({mode}), dashed red line"


def model_vs_popularity(reports: dict[str, dict[str, Any]], path: Path) -> str:
    """Grouped bars: for HR, NDCG, MRR and Coverage, one group per K, one bar per report."""
    plt = _pyplot()
    names = [n for n in reports if n != "popularity"] + ["popularity"]
    ks = sorted(set.intersection(*(set(reports[n]["protocol"]["ks"]) for n in names)))
    metrics = ["HR", "NDCG", "MRR", "Coverage"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.8))
    width = 0.8 / len(names)
    x = np.arange(len(ks))
    for ax, metric in zip(axes, metrics):
        for j, name in enumerate(names):
            vals = [reports[name]["metrics"].get(f"{metric}@{k}", np.nan) for k in ks]
            ax.bar(x + (j - (len(names) - 1) / 2) * width, vals, width, label=name,
                   color="tab:gray" if name == "popularity" else None)
        ax.set_xticks(x, [f"@{k}" for k in ks])
        ax.set(title=metric, xlabel="K")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="small")
    _save(fig, path)
    p = reports[names[0]]["protocol"]
    seen = "seen items masked" if p.get("mask_seen") else "seen items not masked"
    return (f"{', '.join(names)} on the {p.get('split')} split, full ranking over {p.get('n_items'):,} items, "
            f"{p.get('queries'):,} queries, {seen}")


def long_tail(counts: np.ndarray, recommended: np.ndarray, k: int, path: Path) -> str:
    """Items ranked by training popularity (x) against their training interactions and how often
    each appears in the top-k lists; catalogue coverage and Gini of the recommendations on it."""
    plt = _pyplot()
    order = np.argsort(-counts, kind="stable")
    rank = np.arange(1, counts.size + 1)
    coverage = float((recommended > 0).mean()) if recommended.size else 0.0
    g = gini(recommended)
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.bar(rank, recommended[order], width=1.0, color="tab:orange", alpha=0.8,
           label=f"times in a top-{k} list")
    ax.set(xlabel="items ranked by training popularity (1 = most popular)", ylabel=f"times in a top-{k} list",
           title="the long tail: training popularity against recommendations")
    ax2 = ax.twinx()
    ax2.plot(rank, counts[order], color="tab:blue", label="training interactions")
    ax2.set_ylabel("training interactions")
    ax2.set_yscale("symlog")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize="small")
    ax.text(0.3, 0.92, f"catalogue coverage@{k}: {coverage:.1%}    Gini: {g:.3f}", transform=ax.transAxes,
            fontsize="medium", bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"})
    _save(fig, path)
    half = max(1, counts.size // 2)
    tail_share = float(recommended[order][half:].sum() / max(1, recommended.sum()))
    return (f"{counts.size:,} items; coverage@{k} {coverage:.1%}, Gini {g:.3f}; the less popular half of the "
            f"catalogue gets {tail_share:.1%} of the recommendation slots")


def _bucket_labels() -> list[str]:
    lows = (1, *(e + 1 for e in LENGTH_EDGES))
    highs = (*LENGTH_EDGES, None)
    return [f"{lo}-{hi}" if hi else f">{lo - 1}" for lo, hi in zip(lows, highs)]


def ndcg_by_history(per_user: dict[str, dict[str, list]], path: Path) -> str:
    """Mean NDCG@10 per history-length bucket, one bar per report, users per bucket written on it."""
    plt = _pyplot()
    labels = _bucket_labels()
    fig, ax = plt.subplots(figsize=(11, 4))
    names = list(per_user)
    width = 0.8 / len(names)
    used: set[int] = set()
    stats = {}
    for name in names:
        lengths = np.asarray(per_user[name]["history_length"])
        ndcg = np.asarray(per_user[name]["NDCG@10"], dtype=float)
        bucket = np.searchsorted(np.asarray(LENGTH_EDGES), lengths, side="left")
        stats[name] = [(ndcg[bucket == b].mean() if (bucket == b).any() else np.nan, int((bucket == b).sum()))
                       for b in range(len(labels))]
        used |= {b for b in range(len(labels)) if stats[name][b][1]}
    shown = sorted(used)
    x = np.arange(len(shown))
    for j, name in enumerate(names):
        vals = [stats[name][b][0] for b in shown]
        bars = ax.bar(x + (j - (len(names) - 1) / 2) * width, vals, width, label=name,
                      color="tab:gray" if name == "popularity" else None)
        if j == 0:
            for bar, b in zip(bars, shown):
                ax.annotate(f"n={stats[name][b][1]}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            xytext=(0, 3), textcoords="offset points", ha="center", fontsize="x-small")
    ax.set_xticks(x, [labels[b] for b in shown])
    ax.set(xlabel="items in the user's history", ylabel="mean NDCG@10", title="NDCG@10 by history length")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path)
    first = names[0]
    worst = min((b for b in shown if stats[first][b][1]), key=lambda b: stats[first][b][0])
    return (f"{', '.join(names)}; {first}'s weakest bucket: {labels[worst]} items "
            f"(NDCG@10 {stats[first][worst][0]:.4f}, {stats[first][worst][1]} users)")


def pretrain_workers(workers: list[dict[str, Any]], seconds: float | None, path: Path) -> str:
    """Per worker: training throughput (target positions/s over the timed steps) and process
    memory (resident now, and peak), from pretrain.json's worker_stats."""
    plt = _pyplot()
    ranks = [int(w.get("rank", i)) for i, w in enumerate(workers)]
    thr = [w["positions"] / w["train_s"] if w.get("train_s") else np.nan for w in workers]
    rss = [w.get("rss_mib", np.nan) for w in workers]
    hwm = [w.get("hwm_mib", np.nan) for w in workers]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 3.8))
    x = np.arange(len(ranks))
    ax_t.bar(x, thr, color="tab:green")
    ax_t.set_xticks(x, [f"rank {r}" for r in ranks])
    ax_t.set(title="throughput per worker", ylabel="target positions / s")
    ax_m.bar(x - 0.2, rss, 0.4, label="resident (end)")
    ax_m.bar(x + 0.2, hwm, 0.4, label="peak")
    ax_m.set_xticks(x, [f"rank {r}" for r in ranks])
    ax_m.set(title="process memory per worker", ylabel="MiB")
    ax_m.legend(fontsize="small")
    for ax in (ax_t, ax_m):
        ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    measured = [t for t in thr if not np.isnan(t)]
    speed = (f"{sum(measured):,.0f} target positions/s together" if measured else
             "throughput not measured (the run had no steps after the warm-up)")
    return (f"{len(ranks)} workers, {speed}, peak memory up to {np.nanmax(hwm):,.0f} MiB per worker"
            + (f"; job wall time {seconds:.1f} s" if seconds else ""))
