"""Top-K over the catalogue for serving: exact (the project's one `metrics.topk`) or approximate
(faiss HNSW, inner product), with the approximate index's recall@k against exact measured.

Both return the `metrics.topk` contract: (scores (B, k'), ids (B, k')) with k' = min(k, N),
best first, item ids 1..N (row 0 = padding, never returned), excluded ids never returned, and
id 0 / score -inf in slots that cannot be filled.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unirec_dist.errors import CheckpointError, UnirecError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def _exclusion_matrix(exclude: list[np.ndarray] | None, batch: int) -> "torch.Tensor | None":
    """Ragged per-query exclusions -> (B, T) int64 padded with 0 (the form `metrics.topk` takes)."""
    import torch

    if exclude is None:
        return None
    width = max((len(e) for e in exclude), default=0)
    if width == 0:
        return None
    out: np.ndarray = np.zeros((batch, width), dtype=np.int64)
    for i, e in enumerate(exclude):
        out[i, : len(e)] = e
    return torch.from_numpy(out)


class ExactIndex:
    """Brute force: one matmul + the deterministic `metrics.topk` (ties: lower id first)."""

    kind = "exact"

    def __init__(self, items: "torch.Tensor") -> None:
        self.items = items
        self.n_items = int(items.shape[0]) - 1

    def params(self) -> dict[str, Any]:
        return {}

    def search(self, query: "torch.Tensor", k: int, exclude: list[np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """query (B, D) -> (scores (B, k'), ids (B, k')) as numpy."""
        import torch

        from unirec_dist.metrics.topk import topk

        with torch.inference_mode():
            scores, ids = topk(query.to(self.items.dtype), self.items, k,
                               exclude=_exclusion_matrix(exclude, query.shape[0]))
        return scores.numpy(), ids.numpy()


class HNSWIndex:
    """faiss IndexHNSWFlat with inner product over rows 1..N (faiss id i = item i + 1).

    Vectors are stored in full, so returned scores are exact dot products; only the candidate
    set is approximate. Exclusions use a faiss IDSelector, so excluded items cost no slots.
    """

    kind = "hnsw"

    def __init__(self, index: Any, n_items: int, M: int, ef_construction: int, ef_search: int) -> None:
        self.index = index
        self.n_items = n_items
        self.M = M
        self.ef_construction = ef_construction
        self.ef_search = ef_search

    def params(self) -> dict[str, Any]:
        return {"M": self.M, "ef_construction": self.ef_construction, "ef_search": self.ef_search}

    @classmethod
    def build(cls, items: "torch.Tensor", M: int = 32, ef_construction: int = 100, ef_search: int = 128
              ) -> "HNSWIndex":
        faiss = _faiss()
        x = np.ascontiguousarray(items[1:].detach().cpu().numpy().astype(np.float32))
        index = faiss.IndexHNSWFlat(x.shape[1], int(M), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(ef_construction)
        log.info("building HNSW index over %d items (M=%d, efConstruction=%d)", x.shape[0], M, ef_construction)
        index.add(x)
        return cls(index, x.shape[0], int(M), int(ef_construction), int(ef_search))

    @classmethod
    def load(cls, path: str | os.PathLike, n_items: int, params: dict[str, Any], ef_search: int | None = None
             ) -> "HNSWIndex":
        faiss = _faiss()
        try:
            index = faiss.read_index(str(path))
        except RuntimeError:
            raise CheckpointError(f"{path}: not a readable faiss index") from None
        if index.ntotal != n_items:
            raise CheckpointError(f"{path}: index holds {index.ntotal} items, the bundle has {n_items}")
        return cls(index, n_items, int(params.get("M", 32)), int(params.get("ef_construction", 0)),
                   int(ef_search or params.get("ef_search", 128)))

    def save(self, path: str | os.PathLike) -> None:
        _faiss().write_index(self.index, str(Path(path)))

    def search(self, query: "torch.Tensor", k: int, exclude: list[np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        q = np.ascontiguousarray(query.detach().cpu().numpy().astype(np.float32))
        k = min(int(k), self.n_items)
        b = q.shape[0]
        scores = np.full((b, k), -np.inf, dtype=np.float32)
        ids = np.zeros((b, k), dtype=np.int64)
        if k <= 0:
            return scores, ids
        for row in range(b):
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.ef_search, k)
            ex = None if exclude is None else np.asarray(exclude[row], dtype=np.int64)
            if ex is not None and len(ex):
                ex = np.unique(ex[(ex >= 1) & (ex <= self.n_items)]) - 1
                # keep the selectors referenced until search returns (SWIG does not own them)
                batch_sel = faiss.IDSelectorBatch(ex)
                not_sel = faiss.IDSelectorNot(batch_sel)
                params.sel = not_sel
            d, i = self.index.search(q[row : row + 1], k, params=params)
            found = i[0] >= 0
            n = int(found.sum())
            # faiss returns best first; equal scores keep faiss's order (approximate anyway)
            scores[row, :n] = d[0][found]
            ids[row, :n] = i[0][found] + 1
        return scores, ids


def _faiss():
    try:
        import faiss
    except ImportError:
        raise UnirecError("the approximate index needs faiss: pip install faiss-cpu") from None
    return faiss


def recall_at_k(approx: Any, exact: ExactIndex, queries: "torch.Tensor", k: int = 10,
                exclude: list[np.ndarray] | None = None) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / |exact top-k| (padding slots ignored)."""
    _, a = approx.search(queries, k, exclude)
    _, e = exact.search(queries, k, exclude)
    hits, total = 0, 0
    for ra, re_ in zip(a, e):
        truth = set(int(x) for x in re_ if x > 0)
        hits += len(truth & set(int(x) for x in ra if x > 0))
        total += len(truth)
    return hits / total if total else 1.0
