"""The TorchRec sharders that the planner and DistributedModelParallel use (see sharding.py).

`CpuRowWiseEBCSharder` is the stock EmbeddingBagCollection sharder plus row_wise on CPU (the
stock one offers row_wise only on CUDA; on CPU it trains and checkpoints correctly, tested).
Imports torchrec.distributed when imported: sharding.py imports this module only when it shards.
"""
from __future__ import annotations

from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.types import ShardingType


class CpuRowWiseEBCSharder(EmbeddingBagCollectionSharder):
    """The stock EBC sharder plus row_wise on CPU (tested: trains and checkpoints correctly)."""

    def sharding_types(self, compute_device_type: str) -> list[str]:
        types = list(super().sharding_types(compute_device_type))
        if compute_device_type == "cpu" and ShardingType.ROW_WISE.value not in types:
            types.append(ShardingType.ROW_WISE.value)
        return types
