"""Next-item retrieval losses over dot-product scores.

sampled_softmax: each position's positive against `num_negatives` items drawn uniformly per
position (fresh for every position, as in generative-recommenders) plus optionally `in_batch`
positives of other positions shared across the batch; logits are corrected by log of each
negative's expected sample count (logQ), and accidental hits (negative == positive) are masked.
full_softmax: cross-entropy over the whole catalogue (small catalogues).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

_MASKED = -1e4   # a logit that vanishes after exp() but keeps gradients finite


def sampled_softmax_loss(
    q: torch.Tensor,
    pos_ids: torch.Tensor,
    item_vecs: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    temperature: float,
    num_negatives: int,
    in_batch: int = 0,
    log_popularity: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    group: int = 1,
    n_rows: int | None = None,
    negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """q (P, D) query vectors, pos_ids (P,) positives, item_vecs (N, D) (row 0 = padding, never
    sampled) -> scalar mean loss. `log_popularity` (N,): log training frequency of each item,
    needed for the logQ correction of in-batch negatives.

    item_vecs may instead be a function ids (M,) -> (M, D) with `n_rows` = N: then only the rows
    the loss uses (positives, sampled and in-batch negatives, each once) are computed, in ONE call
    (one collective lookup when the table is sharded), so a step costs O(rows used), not O(N):
    what a catalogue of millions of items needs. Same draws, same loss as the (N, D) form.

    group: positions are split at random into groups of `group` that share one draw of
    negatives (1 = a fresh draw for every position). Groups are random across the batch, so
    positions of one sequence almost never share; the cost of gathering negatives drops by
    `group` (the (P, K, D) gather is what dominates a CPU step).

    negatives: the uniform draws made already (the loader's, for a pipelined batch whose
    lookups ran ahead): (P, K), or (ceil(P / group), K) with group > 1; None: drawn here."""
    P = q.shape[0]
    whole = isinstance(item_vecs, torch.Tensor)
    if isinstance(item_vecs, torch.Tensor):
        N = item_vecs.shape[0]
    elif n_rows is None:
        raise ValueError("item_vecs as a function needs n_rows")
    else:
        N = n_rows
    # the random draws, in the order this loss has always made them
    G = group if num_negatives > 0 and group > 1 else 1
    negs = perm = None
    if num_negatives > 0 and G > 1:
        n_groups = -(-P // G)
        total = n_groups * G
        perm = torch.randperm(total, device=q.device, generator=generator)   # slot s holds position perm[s]
        negs = _given(negatives, (n_groups, num_negatives)) if negatives is not None else \
            torch.randint(1, N, (n_groups, num_negatives), device=q.device, generator=generator)
    elif num_negatives > 0:
        negs = _given(negatives, (P, num_negatives)) if negatives is not None else \
            torch.randint(1, N, (P, num_negatives), device=q.device, generator=generator)
    pick = torch.randint(0, P, (min(in_batch, P),), device=q.device, generator=generator) if in_batch > 0 else None
    ib = None if pick is None else pos_ids[pick]                                      # (M,)
    # rows: ids -> index into `table`
    if isinstance(item_vecs, torch.Tensor):
        table = item_vecs
        pos_at, neg_at, ib_at = pos_ids, negs, ib
    else:
        pieces = [pos_ids] + ([negs.reshape(-1)] if negs is not None else []) + ([ib] if ib is not None else [])
        uniq, inv = torch.unique(torch.cat(pieces), return_inverse=True)
        table = item_vecs(uniq)
        at = list(inv.split([len(x) for x in pieces]))
        pos_at = at.pop(0)
        neg_at = at.pop(0).view_as(negs) if negs is not None else None
        ib_at = at.pop(0) if ib is not None else None
    pos_logit = (q * table[pos_at]).sum(-1, keepdim=True) / temperature               # (P, 1)
    parts = [pos_logit]
    if negs is not None and perm is not None:
        qp = q if total == P else torch.cat([q, q.new_zeros(total - P, q.shape[1])])
        lg = torch.bmm(qp[perm].view(n_groups, G, -1), table[neg_at].transpose(1, 2)).reshape(total, -1)
        slot = torch.argsort(perm)[:P]                                          # position p sits in slot[p]
        neg_logit = lg[slot] / temperature                                      # (P, K)
        neg = negs[slot // G]
        if in_batch > 0:
            neg_logit = neg_logit - math.log(num_negatives / (N - 1))
        parts.append(neg_logit.masked_fill(neg == pos_ids[:, None], _MASKED))
    elif negs is not None:
        if whole and N <= num_negatives * q.shape[1]:
            # scoring the whole catalogue then gathering needs less memory than (P, K, D)
            neg_logit = (q @ table.T).gather(1, negs) / temperature
        else:
            neg_logit = torch.einsum("pd,pkd->pk", q, table[neg_at]) / temperature
        if in_batch > 0:
            # logQ: expected count K/(N-1) per item; only matters beside in-batch negatives
            neg_logit = neg_logit - math.log(num_negatives / (N - 1))
        parts.append(neg_logit.masked_fill(negs == pos_ids[:, None], _MASKED))
    if ib is not None and pick is not None:
        ib_logit = (q @ table[ib_at].T) / temperature                                 # (P, M)
        if log_popularity is not None:
            ib_logit = ib_logit - (math.log(len(pick)) + log_popularity[ib])[None, :]
        parts.append(ib_logit.masked_fill(ib[None, :] == pos_ids[:, None], _MASKED))
    logits = torch.cat(parts, dim=1)
    return F.cross_entropy(logits, torch.zeros(P, dtype=torch.long, device=q.device))


def _given(negatives: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    if tuple(negatives.shape) != shape:
        raise ValueError(f"negatives drawn for {tuple(negatives.shape)} (rows, K), the loss needs {shape}")
    return negatives.long()


def full_softmax_loss(q: torch.Tensor, pos_ids: torch.Tensor, item_vecs: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """q (P, D), pos_ids (P,), item_vecs (N, D) -> scalar; padding row 0 is excluded."""
    logits = (q @ item_vecs.T) / temperature
    logits[:, 0] = _MASKED
    return F.cross_entropy(logits, pos_ids)
