"""Small torch.distributed helpers shared by training and the tasks (no-ops without a process group)."""
from __future__ import annotations

import torch


def max_over_ranks(values: list[int]) -> list[int]:
    """Each value's maximum over the ranks of the default process group, in one all-reduce;
    `values` itself when there is no process group or one rank. Collective: every rank calls it."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(v) for v in t]


def pad_to_ranks_max(t: torch.Tensor) -> torch.Tensor:
    """`t` with zero rows appended along dim 0 up to the largest dim-0 size over the ranks (one
    all-reduce; `t` itself without a process group). A row-wise sharded pooled table's lookup
    must have the same size on every rank under gloo (its backward's all_gather needs equal
    sizes); id 0 is the padding row. Collective: every rank calls it."""
    (m,) = max_over_ranks([t.shape[0]])
    return torch.cat([t, t.new_zeros((m - t.shape[0],) + tuple(t.shape[1:]))]) if m > t.shape[0] else t
