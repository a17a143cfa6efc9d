"""Next-item retrieval losses over dot-product scores.

sampled_softmax: each position's positive against `num_negatives` items drawn uniformly per
position (fresh for every position, as in generative-recommenders) plus optionally `in_batch`
positives of other positions shared across the batch; logits are corrected by log of each
negative's expected sample count (logQ), and accidental hits (negative == positive) are masked.
full_softmax: cross-entropy over the whole catalogue (small catalogues).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_MASKED = -1e4   # a logit that vanishes after exp() but keeps gradients finite


def sampled_softmax_loss(
    q: torch.Tensor,
    pos_ids: torch.Tensor,
    item_vecs: torch.Tensor,
    temperature: float,
    num_negatives: int,
    in_batch: int = 0,
    log_popularity: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    group: int = 1,
) -> torch.Tensor:
    """q (P, D) query vectors, pos_ids (P,) positives, item_vecs (N, D) (row 0 = padding, never
    sampled) -> scalar mean loss. `log_popularity` (N,): log training frequency of each item,
    needed for the logQ correction of in-batch negatives.

    group: positions are split at random into groups of `group` that share one draw of
    negatives (1 = a fresh draw for every position). Groups are random across the batch, so
    positions of one sequence almost never share; the cost of gathering negatives drops by
    `group` (the (P, K, D) gather is what dominates a CPU step)."""
    P = q.shape[0]
    N = item_vecs.shape[0]
    pos_logit = (q * item_vecs[pos_ids]).sum(-1, keepdim=True) / temperature           # (P, 1)
    parts = [pos_logit]
    if num_negatives > 0 and group > 1:
        G = group
        n_groups = -(-P // G)
        total = n_groups * G
        qp = q if total == P else torch.cat([q, q.new_zeros(total - P, q.shape[1])])
        perm = torch.randperm(total, device=q.device, generator=generator)   # slot s holds position perm[s]
        negs = torch.randint(1, N, (n_groups, num_negatives), device=q.device, generator=generator)
        lg = torch.bmm(qp[perm].view(n_groups, G, -1), item_vecs[negs].transpose(1, 2)).reshape(total, -1)
        slot = torch.argsort(perm)[:P]                                          # position p sits in slot[p]
        neg_logit = lg[slot] / temperature                                      # (P, K)
        neg = negs[slot // G]
        if in_batch > 0:
            neg_logit = neg_logit - math.log(num_negatives / (N - 1))
        parts.append(neg_logit.masked_fill(neg == pos_ids[:, None], _MASKED))
    elif num_negatives > 0:
        neg = torch.randint(1, N, (P, num_negatives), device=q.device, generator=generator)
        if N <= num_negatives * q.shape[1]:
            # scoring the whole catalogue then gathering needs less memory than (P, K, D)
            neg_logit = (q @ item_vecs.T).gather(1, neg) / temperature
        else:
            neg_logit = torch.einsum("pd,pkd->pk", q, item_vecs[neg]) / temperature
        if in_batch > 0:
            # logQ: expected count K/(N-1) per item; only matters beside in-batch negatives
            neg_logit = neg_logit - math.log(num_negatives / (N - 1))
        parts.append(neg_logit.masked_fill(neg == pos_ids[:, None], _MASKED))
    if in_batch > 0:
        pick = torch.randint(0, P, (min(in_batch, P),), device=q.device, generator=generator)
        ib = pos_ids[pick]                                                             # (M,)
        ib_logit = (q @ item_vecs[ib].T) / temperature                                 # (P, M)
        if log_popularity is not None:
            ib_logit = ib_logit - (math.log(len(pick)) + log_popularity[ib])[None, :]
        parts.append(ib_logit.masked_fill(ib[None, :] == pos_ids[:, None], _MASKED))
    logits = torch.cat(parts, dim=1)
    return F.cross_entropy(logits, torch.zeros(P, dtype=torch.long, device=q.device))


def full_softmax_loss(q: torch.Tensor, pos_ids: torch.Tensor, item_vecs: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """q (P, D), pos_ids (P,), item_vecs (N, D) -> scalar; padding row 0 is excluded."""
    logits = (q @ item_vecs.T) / temperature
    logits[:, 0] = _MASKED
    return F.cross_entropy(logits, pos_ids)
