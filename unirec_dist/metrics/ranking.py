"""Full-ranking metrics as a streaming, distributed-correct accumulator.

Feed it the ids that `unirec_dist.metrics.topk.topk` returned for a batch of queries and the
batch's targets; read the means at the end. Every update is vectorized over the batch.

Definitions (per query q with target set T_q = the distinct non-zero ids of its targets row,
top-K list R_q = the first K returned ids, hits_K(q) = |R_q ∩ T_q|; id 0 is never a hit):
  HR@K         1 if hits_K(q) > 0 else 0 (share of queries with a target in the top K)
  Recall@K     hits_K(q) / |T_q|  (the standard definition, as in RecBole; with one target per
               query, as in leave-one-out, Recall@K == HR@K)
  Precision@K  hits_K(q) / min(K, N)  (N = catalogue size: a list cannot be longer than N)
  NDCG@K       DCG / IDCG, DCG = sum over hit ranks r (1-based) of 1 / log2(r + 1),
               IDCG = sum_{i=1}^{min(|T_q|, K)} 1 / log2(i + 1)
  MRR@K        1 / (rank of the first hit) if hits_K(q) > 0 else 0
  Coverage@K   |union over counted queries of R_q| / N, the share of the catalogue that
               appears in at least one top-K list (an aggregate, not a mean over queries)
Queries with no target (an all-zero targets row) are skipped and not counted. The reported
HR/Recall/Precision/NDCG/MRR are means over the counted queries.

Distributed: each rank feeds its own shard of queries; `compute()` all-reduces the sums (SUM)
and the per-item best ranks behind coverage (MIN) over the default process group when one is
initialised, so every rank gets the metrics of the whole query set, identical to a
single-process run.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

METRICS = ("HR", "Recall", "NDCG", "MRR", "Precision")
_NEVER = 2**31 - 1  # best_rank of an item never listed


class RankingAccumulator:
    """Streams (top-K ids, targets) batches into per-K sums; see the module docstring.

    ks:      cut-offs, e.g. (10, 50, 200); each must be >= 1 (larger than N is allowed)
    n_items: catalogue size N (item ids 1..N; 0 = padding)
    """

    def __init__(self, ks: Sequence[int], n_items: int, device: "torch.device | str" = "cpu") -> None:
        import torch

        ks = [int(k) for k in ks]
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be positive cut-offs, got {ks}")
        if n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {n_items}")
        self.ks = ks
        self.n_items = int(n_items)
        self.device = torch.device(device)
        # sums[i, j] = sum over queries of metric METRICS[j] at ks[i]
        self.sums = torch.zeros((len(ks), len(METRICS)), dtype=torch.float64, device=self.device)
        self.count = torch.zeros((), dtype=torch.float64, device=self.device)
        # best_rank[item] = the best (lowest) rank at which item appeared in any counted list;
        # top-K lists are prefixes, so Coverage@K = #(best_rank <= K) / N for every K at once
        self.best_rank = torch.full((self.n_items + 1,), _NEVER, dtype=torch.int32, device=self.device)

    @property
    def max_k(self) -> int:
        """The list length `topk` must return for this accumulator (clamped to N)."""
        return min(max(self.ks), self.n_items)

    def reset(self) -> None:
        self.sums.zero_()
        self.count.zero_()
        self.best_rank.fill_(_NEVER)

    def update(self, ids: "torch.Tensor", targets: "torch.Tensor") -> "tuple[torch.Tensor, torch.Tensor] | None":
        """ids: (B, L) top-L item ids, best first, 0 = empty slot, L >= min(max(ks), N).
        targets: (B, T) target item ids padded with 0 (duplicates count once).
        Returns this batch's per-query values, (B, len(ks), len(METRICS)), and the (B,) mask of
        counted queries (None for an empty batch), for per-query breakdowns."""
        import torch

        if ids.dim() != 2 or targets.dim() != 2 or ids.shape[0] != targets.shape[0]:
            raise ValueError(f"ids (B, L) and targets (B, T) must agree, got {tuple(ids.shape)}, {tuple(targets.shape)}")
        if ids.shape[1] < self.max_k:
            raise ValueError(f"ids hold {ids.shape[1]} items per query; metrics at K={max(self.ks)} need {self.max_k}")
        ids = ids.to(self.device, torch.long)
        targets = targets.to(self.device, torch.long)
        b, width = ids.shape
        if b == 0:
            return None

        # distinct non-zero targets per row
        t_sorted = torch.sort(targets, dim=1).values
        first = torch.ones_like(t_sorted, dtype=torch.bool)
        first[:, 1:] = t_sorted[:, 1:] != t_sorted[:, :-1]
        distinct = first & (t_sorted != 0)
        n_targets = distinct.sum(dim=1)  # (B,)
        valid = n_targets > 0

        # hit[b, r]: the r-th returned item is one of row b's (distinct, non-zero) targets
        uniq = torch.where(distinct, t_sorted, -1)  # -1 matches no id
        if uniq.shape[1] <= 64:  # the usual case (leave-one-out: 1): a broadcast compare
            hit = (ids.unsqueeze(2) == uniq.unsqueeze(1)).any(dim=2)
        else:  # many targets per row: row-offset keys make it one isin over flat arrays
            stride = self.n_items + 2
            row = torch.arange(b, device=self.device).unsqueeze(1) * stride
            hit = torch.isin(row + ids, (row + uniq)[distinct])
        hit &= ids != 0  # (B, L)
        hit_f = hit.to(torch.float64)

        ranks = torch.arange(1, width + 1, device=self.device, dtype=torch.float64)
        discount = 1.0 / torch.log2(ranks + 1.0)  # (L,)
        cum_hits = torch.cumsum(hit_f, dim=1)  # (B, L)
        cum_dcg = torch.cumsum(hit_f * discount, dim=1)
        cum_idcg = torch.cumsum(discount, dim=0)  # (L,)
        # rank of the first hit (width + 1 when none) -> reciprocal rank
        first_hit = torch.where(hit.any(dim=1), hit.to(torch.int8).argmax(dim=1) + 1, width + 1)

        # every K at once: column i of each (B, len(ks)) tensor is cut-off ks[i]
        cut = torch.tensor([min(k, self.n_items, width) for k in self.ks], device=self.device)  # list length at K
        h = cum_hits[:, cut - 1]
        ideal = cum_idcg[torch.minimum(n_targets.clamp(min=1).unsqueeze(1), cut) - 1]
        fh = first_hit.unsqueeze(1)
        rr = torch.where(fh <= cut, 1.0 / fh.to(torch.float64), 0.0)
        per_query = torch.stack(
            [
                (h > 0).to(torch.float64),  # HR
                h / n_targets.clamp(min=1).unsqueeze(1),  # Recall
                cum_dcg[:, cut - 1] / ideal,  # NDCG
                rr,  # MRR
                h / torch.tensor([min(k, self.n_items) for k in self.ks], device=self.device),  # Precision
            ],
            dim=2,
        )  # (B, len(ks), len(METRICS))
        self.sums += per_query[valid].sum(dim=0)
        self.count += valid.sum()
        listed = ids[valid]
        rank = torch.arange(1, width + 1, device=self.device, dtype=torch.int32).expand_as(listed)
        self.best_rank.scatter_reduce_(0, listed.reshape(-1), rank.reshape(-1), reduce="amin")
        return per_query, valid

    def _reduced(self) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
        import torch
        import torch.distributed as dist

        sums, count, best = self.sums.clone(), self.count.clone(), self.best_rank.clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flat = torch.cat([sums.reshape(-1), count.reshape(1)])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            sums, count = flat[:-1].view_as(sums), flat[-1]
            dist.all_reduce(best, op=dist.ReduceOp.MIN)
        return sums, count, best

    def compute(self) -> dict[str, float]:
        """Metric name -> value (means over counted queries; Coverage over N), plus "queries".

        Collective when a process group is initialised: every rank must call it.
        """
        sums, count, best = self._reduced()
        n = float(count)
        out: dict[str, float] = {}
        for i, k in enumerate(self.ks):
            for j, m in enumerate(METRICS):
                out[f"{m}@{k}"] = float(sums[i, j]) / n if n else math.nan
            out[f"Coverage@{k}"] = float((best[1:] <= k).sum()) / self.n_items
        out["queries"] = int(n)
        return out
