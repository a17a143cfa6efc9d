"""Private torch APIs (see unirec_dist.compat). Imports torch.distributed when imported."""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed.checkpoint.filesystem as _dcp_fs
import torch.distributed.checkpoint.metadata as _dcp_md
import torch.serialization

# TorchRec's sharded tables still hand out ShardedTensor state (no public path in torch)
from torch.distributed._shard.sharded_tensor import ShardedTensor

# TorchRec's fused table optimizers are attached with this (what torchrec's own examples call)
from torch.distributed.optim import _apply_optimizer_in_backward as apply_optimizer_in_backward

__all__ = ["ShardedTensor", "apply_optimizer_in_backward", "dcp_metadata_globals", "dtensor_global_offset",
           "init_optim_state"]


def init_optim_state(opt: torch.optim.Optimizer) -> None:
    """Create an optimizer's lazily built state (Adam's moments) in place, so that DCP can load into
    it. torch's own get/set_optimizer_state_dict call this; there is no public equivalent."""
    from torch.distributed.checkpoint.state_dict import _init_optim_state

    _init_optim_state(opt)


def dtensor_global_offset(t: Any) -> tuple[int, ...]:
    """The global offset of a DTensor's local shard (per dim). The public DTensor API gives the
    local tensor and the placements, not where the shard starts."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, off = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return tuple(int(o) for o in off)


def dcp_metadata_globals() -> dict[tuple[str, str], Any]:
    """The private globals DCP pickles into its `.metadata` file (the allow-list of
    checkpoint/dcp.py needs them by name): a memory-format table, the storage info class and the
    function that tensor layouts are pickled as a call of (a lookup by name, no code)."""
    return {
        (_dcp_md.__name__, "_MEM_FORMAT_ENCODING"): _dcp_md._MEM_FORMAT_ENCODING,
        (_dcp_fs.__name__, "_StorageInfo"): _dcp_fs._StorageInfo,
        ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
    }
