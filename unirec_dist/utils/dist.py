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
