"""Synthetic catalogues and a weight-free model, for serving tests and `bench/serve.py`.

The catalogue is clustered (items = cluster centre + noise, L2-normalised), like trained item
embeddings and unlike i.i.d. Gaussian vectors, which no approximate index handles well and no
trained model produces. Synthetic users draw their histories from one or two clusters.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

if TYPE_CHECKING:
    from unirec_dist.data.batch import SeqBatch


class MeanPoolRetriever(torch.nn.Module):
    """Retriever whose query is the mean of the history's item vectors (last `max_len` items).

    items: (N + 1, D) item matrix, row 0 = padding. No trainable weights: a stand-in model for
    serving tests and benchmarks, with the same interface as the real ones.
    """

    def __init__(self, items: "torch.Tensor", max_len: int = 50) -> None:
        super().__init__()
        self.register_buffer("items", items, persistent=False)
        self.max_len = int(max_len)

    def item_embeddings(self) -> "torch.Tensor":
        return self.items

    def query_embeddings(self, batch: "SeqBatch") -> "torch.Tensor":
        """(B, D): mean of each row's history vectors (zeros for an empty history)."""
        jt = batch.seq["item"]
        values, lengths = jt.values(), jt.lengths()
        rows = torch.repeat_interleave(torch.arange(lengths.shape[0]), lengths)
        out = torch.zeros(lengths.shape[0], self.items.shape[1], dtype=self.items.dtype)
        out.index_add_(0, rows, self.items[values])
        return out / lengths.clamp(min=1).unsqueeze(1).to(out.dtype)


def synthetic_catalogue(n_items: int, dim: int = 64, n_clusters: int | None = None, noise: float = 1.5,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N + 1, D) float32 L2-normalised item vectors (row 0 zeros) and each item's cluster (N + 1,).

    Items are a unit-variance Gaussian centre plus `noise` times unit-variance noise: noise 1.5
    puts an item's cosine to its centre near 0.55 (clusters overlap, as trained embeddings do).
    Much tighter clusters (noise 0.5) make an HNSW graph nearly disconnected between clusters, so
    a query between two clusters (a two-interest history) needs a far larger efSearch."""
    rng = np.random.default_rng(seed)
    n_clusters = n_clusters or max(8, int(np.sqrt(n_items)))
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    cluster = rng.integers(0, n_clusters, size=n_items + 1)
    items = np.empty((n_items + 1, dim), dtype=np.float32)
    step = 1 << 18  # bounded temporaries at 1M items
    for s in range(0, n_items + 1, step):
        e = min(s + step, n_items + 1)
        block = centres[cluster[s:e]] + noise * rng.standard_normal((e - s, dim)).astype(np.float32)
        items[s:e] = block / np.linalg.norm(block, axis=1, keepdims=True)
    items[0] = 0.0
    cluster[0] = -1
    return items, cluster


def synthetic_histories(cluster: np.ndarray, n_users: int, length: int = 20, seed: int = 1) -> pa.ListArray:
    """Histories of item ids (1..N) drawn from one or two clusters per user: list<int32> (n_users,)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, len(cluster))
    order = np.argsort(cluster[1:], kind="stable")
    sorted_clusters = cluster[1:][order]
    n_clusters = int(cluster.max()) + 1
    starts = np.searchsorted(sorted_clusters, np.arange(n_clusters))
    ends = np.searchsorted(sorted_clusters, np.arange(n_clusters), side="right")
    out = []
    for _ in range(n_users):
        picks = []
        for c in rng.choice(n_clusters, size=2, replace=False):
            if ends[c] > starts[c]:
                pool = ids[order[starts[c]:ends[c]]]
                picks.append(rng.choice(pool, size=max(1, length // 2)))
        h = np.concatenate(picks) if picks else rng.choice(ids, size=length)
        rng.shuffle(h)
        out.append(h.astype(np.int32))
    return pa.array(out, type=pa.list_(pa.int32()))


def make_synthetic_bundle(out: str | os.PathLike, n_items: int, dim: int = 64, n_users: int = 200,
                          history_len: int = 20, max_len: int = 50, seed: int = 0, noise: float = 1.5,
                          hnsw: dict | None = None, overwrite: bool = False,
                          item_prefix: str = "i", user_prefix: str = "u") -> Path:
    """A complete bundle over a synthetic catalogue (raw ids "i<n>", users "u<n>" by default)."""
    from unirec_dist.serving.bundle import vocab_table, write_bundle

    items, cluster = synthetic_catalogue(n_items, dim, noise=noise, seed=seed)
    hist = synthetic_histories(cluster, n_users, history_len, seed=seed + 1)
    item_vocab = vocab_table(pa.array([f"{item_prefix}{i}" for i in range(1, n_items + 1)]))
    user_vocab = vocab_table(pa.array([f"{user_prefix}{u}" for u in range(1, n_users + 1)]))
    histories = pa.table({"user": pa.array(np.arange(1, n_users + 1, dtype=np.int32)), "items": hist})
    return write_bundle(
        out,
        item_matrix=torch.from_numpy(items),
        item_vocab=item_vocab,
        user_vocab=user_vocab,
        histories=histories,
        builder="synthetic-meanpool",
        config={"max_len": max_len},
        model_info={"class": "MeanPoolRetriever", "max_len": max_len, "name": "synthetic-meanpool"},
        dataset={"name": f"synthetic-{n_items}", "vocab_hash": None,
                 "vocab_sizes": {"item": n_items + 1, "user": n_users + 1}},
        hnsw=hnsw,
        overwrite=overwrite,
    )
