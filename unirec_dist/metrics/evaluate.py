"""Full-ranking evaluation of a Retriever on a prepared dataset's valid/test queries.

Protocol (leave-one-out, full ranking; README "Evaluation protocol"): every query is ranked against ALL N items of the
catalogue (no sampled negatives); `mask_seen` says whether the items of the query's full history
are removed from the ranking, and it is reported with every result. Ties: lower item id first
(`unirec_dist.metrics.topk`). Metric definitions: `unirec_dist.metrics.ranking`.

The same code serves validation during training: `evaluate_table` takes a query table directly;
with an initialised process group each rank scores only its own rows of the catalogue
(`unirec_dist.metrics.sharded`).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unirec_dist.data.batch import last_n, query_batch
from unirec_dist.metrics.ranking import METRICS, RankingAccumulator

if TYPE_CHECKING:
    import torch

    from unirec_dist.models.protocol import Retriever

log = logging.getLogger(__name__)

DEFAULT_KS = (10, 50, 200)
TIE_RULE = "equal scores: lower item id ranks first"


class PopularityRetriever:
    """The popularity baseline as a Retriever: every query scores item i by its number of
    training interactions, so it runs through exactly the same top-K and metric code.

    counts: (N + 1,) training interaction counts per item id (index 0 = padding)
    item_embeddings() -> (N + 1, 1) counts; query_embeddings(batch) -> (B, 1) ones.
    """

    max_len = 1  # the history is not read; keep the batches small

    def __init__(self, counts: "torch.Tensor") -> None:
        import torch

        self.counts = counts.to(torch.float32).reshape(-1, 1)

    @classmethod
    def from_train(cls, train: pa.Table, n_items: int) -> "PopularityRetriever":
        """Counts from the prepared `train` table (column `items`: list<int32> per user)."""
        import torch

        flat = pc.list_flatten(train["items"]).to_numpy(zero_copy_only=False).astype(np.int64)
        counts = np.bincount(flat, minlength=n_items + 1)[: n_items + 1]
        return cls(torch.from_numpy(counts))

    def item_embeddings(self) -> "torch.Tensor":
        return self.counts

    def query_embeddings(self, batch) -> "torch.Tensor":
        import torch

        return torch.ones((len(batch), 1), dtype=self.counts.dtype, device=self.counts.device)


def popularity(dataset: Any) -> PopularityRetriever:
    """The popularity baseline of a prepared dataset (item counts in its train split)."""
    return PopularityRetriever.from_train(dataset.table("train"), int(dataset.n_items))


def history_kjt(histories: pa.ListArray | pa.ChunkedArray) -> "Any":
    """The FULL (untruncated) histories as a KeyedJaggedTensor with key "item", for masking."""
    import torch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    values, lengths = last_n(histories, None)
    return KeyedJaggedTensor.from_lengths_sync(
        keys=["item"], values=torch.from_numpy(values), lengths=torch.from_numpy(lengths)
    )


def _by_length(queries: pa.Table, max_len: int | None) -> pa.Table:
    """Queries ordered by (truncated) history length, longest first. Metrics do not depend on
    the order, but an encoder pads each batch to its longest row: grouping equal lengths cuts
    the padded positions of ML-1M's test set by 44% (and attention's L^2 work by 57%)."""
    lengths = pc.list_value_length(queries["history"]).fill_null(0).to_numpy(zero_copy_only=False)
    if max_len is not None:
        lengths = np.minimum(lengths, max_len)
    return queries.take(np.argsort(-lengths, kind="stable"))


def evaluate_table(
    retriever: "Retriever",
    queries: pa.Table,
    n_items: int,
    ks: Sequence[int] = DEFAULT_KS,
    mask_seen: bool = False,
    batch_size: int = 1024,
    progress: bool | None = None,
    per_user: bool = False,
) -> dict[str, Any]:
    """Metrics of `retriever` on `queries` (user: int32, history: list<int32>, targets: list<int32>).

    Returns the `RankingAccumulator.compute()` dict (metric@K -> value, "queries" -> count).
    Ranking is `unirec_dist.metrics.sharded.ranked_lists`: with an initialised process group the
    catalogue's rows are split over the ranks and the per-rank top-K merged, so the lists, and
    the metrics, are identical to one process's (collective: every rank calls this with the same
    queries; every rank gets the metrics).
    progress: tqdm bar; None = only on a terminal and when there are several batches.
    per_user: also return "per_user" = {"user", "history_length" (full, untruncated), "NDCG@10"}
    lists, one entry per counted query, on rank 0 (empty on the others; needs 10 in `ks`).
    """
    import torch

    from unirec_dist.metrics.sharded import rank_world, ranked_lists

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    max_len = getattr(retriever, "max_len", None)
    queries = _by_length(queries, max_len)
    rank = rank_world()[0]
    was_training = getattr(retriever, "training", None)
    module = cast("torch.nn.Module", retriever)    # one with a training mode is an nn.Module
    if was_training:
        module.eval()
    try:
        # no_grad, not inference_mode: TorchRec's sharded lookups (the DMP model of `--workers N`
        # and of validation during pretraining) fail under inference_mode (a dispatcher error)
        with torch.no_grad():
            device = _device(retriever)
            acc = RankingAccumulator(ks, n_items, device=device)
            if per_user:
                if 10 not in acc.ks:
                    raise ValueError(f"per_user needs K=10 among ks, got {list(ks)}")
                at10 = (acc.ks.index(10), METRICS.index("NDCG"))
                rows: dict[str, list] = {"user": [], "history_length": [], "NDCG@10": []}
            n_batches = -(-queries.num_rows // batch_size)
            bar = _progress(n_batches, progress)
            step = batch_size * max(1, QUERY_BLOCK // batch_size)
            for block in range(0, queries.num_rows, step):
                parts = [queries.slice(b, batch_size) for b in range(block, min(block + step, queries.num_rows), batch_size)]
                batches = [query_batch(p, max_len).to(device) for p in parts]
                excludes = [history_kjt(p["history"]).to(device) for p in parts] if mask_seen else None
                lists = ranked_lists(retriever, batches, excludes, n_items, acc.max_k)
                # every rank holds the same lists; rank 0 alone counts them, so compute()'s
                # all-reduce adds zeros and the sums are bit-identical to one process's
                for part, batch, (_, ids) in zip(parts, batches, lists):
                    done = acc.update(ids, batch.targets) if rank == 0 else None
                    if per_user and done is not None:
                        values, counted = done[0][:, at10[0], at10[1]].cpu().numpy(), done[1].cpu().numpy()
                        rows["user"] += part["user"].to_numpy(zero_copy_only=False)[counted].tolist()
                        lengths = pc.list_value_length(part["history"]).fill_null(0).to_numpy(zero_copy_only=False)
                        rows["history_length"] += lengths[counted].tolist()
                        rows["NDCG@10"] += values[counted].tolist()
                if bar is not None:
                    bar.update(len(parts))
            if bar is not None:
                bar.close()
            out: dict[str, Any] = acc.compute()
            if per_user:
                out["per_user"] = rows
            return out
    finally:
        if was_training:
            module.train()


#: queries ranked per pass over the item rows (their vectors and running top-K lists are held)
QUERY_BLOCK = 65536


def _device(retriever: "Retriever") -> "torch.device":
    """Where the retriever computes: a module's first buffer or materialised parameter, else its
    item matrix's device (a plain retriever holds that matrix anyway)."""
    import torch

    if isinstance(retriever, torch.nn.Module):
        for t in (*retriever.buffers(), *retriever.parameters()):
            if t.device.type != "meta":
                return t.device
    return retriever.item_embeddings().device


def _progress(total: int, progress: bool | None):
    if progress is False or (progress is None and total < 20):
        return None
    from tqdm.auto import tqdm

    # disable=None: tqdm switches itself off when stderr is not a terminal
    return tqdm(total=total, desc="evaluate", unit="batch", disable=None if progress is None else False)


def evaluate(
    retriever: "Retriever",
    dataset: Any,
    split: str = "test",
    ks: Sequence[int] = DEFAULT_KS,
    mask_seen: bool = False,
    batch_size: int = 1024,
    progress: bool | None = None,
    per_user: bool = False,
) -> dict[str, Any]:
    """Full-ranking evaluation on `dataset.table(split)`; a JSON-ready report:

    {"protocol": {split, ranking: "full", n_items, queries, mask_seen, ks, tie_break,
                  repeat_rate (share of the split's targets already in the user's history, from
                  the dataset manifest; null when not recorded), ...},
     "metrics": {"HR@10": ..., "Recall@10": ..., "NDCG@10": ..., "MRR@10": ...,
                 "Precision@10": ..., "Coverage@10": ..., ... for every K},
     "seconds": wall time}
    per_user: add "per_user": {"user": [...], "history_length": [...], "NDCG@10": [...]} (one
    entry per query, for breakdowns such as NDCG@10 by history length; needs 10 in `ks`).
    """
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    import torchrec.sparse.jagged_tensor  # noqa: F401  (a one-off import cost, not evaluation time)

    t0 = time.perf_counter()
    n_items = int(dataset.n_items)
    metrics = evaluate_table(
        retriever, dataset.table(split), n_items, ks=ks, mask_seen=mask_seen, batch_size=batch_size, progress=progress,
        per_user=per_user,
    )
    rows = metrics.pop("per_user", None)
    queries = metrics.pop("queries")
    seconds = time.perf_counter() - t0
    log.info("evaluated %d %s queries over %d items in %.2f s", queries, split, n_items, seconds)
    repeat = ((getattr(dataset, "manifest", None) or {}).get("split", {}).get("repeat_rate") or {}).get(split)
    report = {
        "protocol": protocol(split, n_items, queries, mask_seen, ks, repeat),
        "metrics": metrics,
        "seconds": round(seconds, 4),
    }
    if rows is not None:
        report["per_user"] = rows
    return report


def protocol(split: str, n_items: int, queries: int, mask_seen: bool, ks: Sequence[int],
             repeat_rate: float | None = None) -> dict[str, Any]:
    return {
        "split": split,
        "ranking": "full",
        "n_items": n_items,
        "queries": queries,
        "mask_seen": bool(mask_seen),
        "ks": [int(k) for k in ks],
        "repeat_rate": repeat_rate,
        "tie_break": TIE_RULE,
        "recall": "hits@K / |targets|",
        "precision": "hits@K / min(K, n_items)",
    }


def protocol_line(report: dict[str, Any]) -> str:
    """One human line stating the protocol beside the numbers."""
    p = report["protocol"]
    seen = "seen items masked" if p["mask_seen"] else "seen items NOT masked"
    if p.get("repeat_rate") is not None:
        # masking removes every repeat target from reach: say how many there are
        seen += f" ({p['repeat_rate']:.1%} of {p['split']} targets were seen before)"
    return f"split={p['split']}, full ranking over {p['n_items']:,} items, {p['queries']:,} queries, {seen}; ties: lower item id first"


def format_table(report: dict[str, Any], title: str | None = None) -> str:
    """The metrics as a fixed-width text table (rows: metrics, columns: K)."""
    ks = report["protocol"]["ks"]
    m = report["metrics"]
    names = ["HR", "Recall", "NDCG", "MRR", "Precision", "Coverage"]
    head = f"{'metric':<10}" + "".join(f"{'@' + str(k):>10}" for k in ks)
    lines = []
    if title:
        lines.append(title)
    lines.append(protocol_line(report))
    lines.append(head)
    lines.append("-" * len(head))
    for name in names:
        lines.append(f"{name:<10}" + "".join(f"{m[f'{name}@{k}']:>10.4f}" for k in ks))
    return "\n".join(lines)
