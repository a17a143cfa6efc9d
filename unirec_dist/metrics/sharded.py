"""Full-catalogue top-K with the item matrix split by rows over the ranks of a process group.

    ranked_lists(retriever, batches, excludes, n_items, k) -> [(scores (b, k'), ids (b, k'))]

The one scoring path of `unirec evaluate`, `unirec recommend` and validation during training,
for one process and for N ranks alike (world size 1: the one rank owns every row). k' = min(k, N).

What each rank holds (Q = queries of the call, D = vector size, R = ceil((N + 1) / world)):
  * item rows: only its own contiguous block of the (N + 1)-row catalogue (`item_block`: the
    row layout of TorchRec's row-wise sharding, so a row-wise sharded item table is read from
    the rank's own shard), computed `chunk` rows at a time: no rank ever builds the full item
    matrix, and the score buffer is (batch, chunk), never (batch, N + 1);
  * query vectors of every query (Q, D): each rank encodes every world-th batch (exactly the
    batches one process forms, so the vectors are bit-identical to it) and they are all-gathered;
  * its running top-k per query over its own rows (Q, k), with the seen-item mask applied to the
    ids that fall inside its rows; then the all-gathered top-k of every rank (Q, world * k),
    merged by `merge_topk`, which is exact and keeps the tie rule of `topk` (equal scores: lower
    id first). Every rank returns the same lists, identical to a single process's.

Collective when a process group is initialised: every rank calls it with the same batches. A
model whose lookups are collective (TorchRec-sharded tables) sees the same number of
`query_embeddings` and item-row calls on every rank; a rank with nothing left to compute makes a
dummy call and drops its result.

Retrievers: `retriever.item_rows(lo, hi) -> (hi - lo, D)` and `retriever.num_item_rows` are
used when present (the trained model: only those rows are computed); any other Retriever is
scored from slices of its `item_embeddings()`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from unirec_dist.metrics.topk import NEG_INF, block_topk, exclusion_index, merge_topk

if TYPE_CHECKING:
    import torch

    from unirec_dist.data.batch import SeqBatch
    from unirec_dist.models.protocol import Retriever

#: scores computed at once for one (query batch, item chunk): 2^25 float32 values, 128 MiB
SCORE_ELEMENTS = 1 << 25


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def item_block(n_rows: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [lo, hi) of a `n_rows` catalogue that `rank` of `world` scores: blocks of
    ceil(n_rows / world) rows in rank order (the last ones shorter or empty), which is how TorchRec
    lays out a row-wise sharded table (tests/distributed/test_sharded_eval.py checks it)."""
    size = -(-n_rows // world)
    lo = min(rank * size, n_rows)
    return lo, min(lo + size, n_rows)


def _item_source(retriever: "Retriever", n_rows: int) -> Callable[[int, int], "torch.Tensor"]:
    rows = getattr(retriever, "item_rows", None)
    if rows is not None:
        got = int(getattr(retriever, "num_item_rows"))   # beside item_rows: a sharded model's row count
    else:
        full = retriever.item_embeddings()
        got = full.shape[0]

        def rows(lo: int, hi: int) -> "torch.Tensor":
            return full[lo:hi]
    if got != n_rows:
        from unirec_dist.errors import DataError

        raise DataError(f"the model scores {got - 1} items but the dataset has N = {n_rows - 1}")
    return rows


def _encode(retriever: "Retriever", batches: Sequence["SeqBatch"], rank: int, world: int) -> list["torch.Tensor"]:
    """(b_j, D) query vectors of every batch, on every rank (see the module docstring)."""
    if world == 1:
        return [retriever.query_embeddings(b) for b in batches]
    import torch
    import torch.distributed as dist

    n = len(batches)
    width = max(len(b) for b in batches)
    out: list[Any] = [None] * n
    for first in range(0, n, world):
        mine = first + rank
        # past the last batch: the smallest batch again (a collective model must be called)
        q = retriever.query_embeddings(batches[mine if mine < n else n - 1])
        buf = q.new_zeros((width, q.shape[1]))     # all_gather needs equal shapes
        buf[: q.shape[0]] = q
        got = [torch.empty_like(buf) for _ in range(world)]
        dist.all_gather(got, buf)
        for r in range(world):
            if first + r < n:
                out[first + r] = got[r][: len(batches[first + r])]
    return out


def _sorted_exclusions(exclude: Any, b: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(rows, ids) of the items to mask, ordered by id, so each item chunk finds its own by a
    binary search instead of a pass over every excluded pair."""
    import torch

    rows, ids = exclusion_index(exclude, b)
    order = torch.argsort(ids, stable=True)
    return rows[order], ids[order]


def ranked_lists(
    retriever: "Retriever",
    batches: Sequence["SeqBatch"],
    excludes: Sequence[Any] | None,
    n_items: int,
    k: int,
) -> list[tuple["torch.Tensor", "torch.Tensor"]]:
    """Top-k items of every query of `batches` over the whole catalogue (ids 1..n_items).

    batches: SeqBatch list (on the retriever's device); excludes: per batch None, a (b, T) id
    tensor padded with 0 or a KeyedJaggedTensor with key "item" (items never returned for that
    query), or None for no masking. Returns per batch (scores (b, k'), ids (b, k')), best first,
    k' = min(k, n_items); slots beyond the items left after masking: id 0, score -inf.
    Collective when a process group is initialised (module docstring).
    """
    import torch

    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if not batches:
        return []
    rank, world = rank_world()
    kk = min(int(k), int(n_items))
    n_rows = int(n_items) + 1
    rows_of = _item_source(retriever, n_rows)
    queries = _encode(retriever, batches, rank, world)
    masks = [None if excludes is None or excludes[j] is None else _sorted_exclusions(excludes[j], len(b))
             for j, b in enumerate(batches)]
    lo, hi = item_block(n_rows, rank, world)
    per_rank = -(-n_rows // world)
    chunk = max(1, min(per_rank, SCORE_ELEMENTS // max(len(b) for b in batches)))
    # empty lists: what a rank with no rows of its own returns (and the first chunk replaces)
    best = [(q.new_full((q.shape[0], kk), NEG_INF), torch.zeros((q.shape[0], kk), dtype=torch.long, device=q.device))
            for q in queries]
    for start in range(lo, lo + per_rank, chunk):
        end = min(start + chunk, hi)
        if start >= end:
            rows_of(0, 1)        # a rank with fewer rows: the same number of lookups as the others
            continue
        items = rows_of(start, end)
        for j, q in enumerate(queries):
            scores = q @ items.T
            mask = masks[j]
            if mask is not None:
                rows, ids = mask
                a, b = torch.searchsorted(ids, torch.tensor([start, end], device=ids.device)).tolist()
                scores[rows[a:b], ids[a:b] - start] = NEG_INF
            top, top_ids = block_topk(scores, kk, start)
            if start == lo:     # the first chunk's list is the running list (nothing held yet):
                best[j] = (top, top_ids)    # merging it with empty slots would only re-sort it
                continue
            held, held_ids = best[j]
            best[j] = merge_topk(torch.cat([held, top], dim=1), torch.cat([held_ids, top_ids], dim=1), kk)
    if world == 1:
        return best
    import torch.distributed as dist

    sizes = [q.shape[0] for q in queries]
    mine = (torch.cat([s for s, _ in best]), torch.cat([i for _, i in best]))
    gathered = []
    for t in mine:
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        gathered.append(torch.cat(parts, dim=1))
    top, ids = merge_topk(gathered[0], gathered[1], kk)
    return list(zip(top.split(sizes), ids.split(sizes)))
