"""Private TorchRec APIs (see unirec_dist.compat). Imports torchrec.distributed when imported."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

__all__ = ["pipelined_module_names", "sparse_dist_pipeline"]


def sparse_dist_pipeline(model: torch.nn.Module, optimizer: Any, device: torch.device,
                         model_fwd: Callable[[Any], tuple[torch.Tensor, Any]],
                         backward: Callable[[torch.Tensor], None]) -> TrainPipelineSparseDist:
    """A TrainPipelineSparseDist whose forward is `model_fwd(batch) -> (loss, output)` (its public
    `custom_model_fwd`) and whose backward is `backward(loss)`. The pipeline calls
    `loss.backward()` itself in `_backward`, its one backward call; there is no public hook, and a
    Lightning loop needs backward to go through `manual_backward` (precision plugin, the
    strategy's gradient all-reduce), so `_backward` is overridden."""

    class _Pipeline(TrainPipelineSparseDist):
        def _backward(self, losses: torch.Tensor) -> None:
            backward(losses)

    return _Pipeline(model, optimizer, device, execute_all_batches=True, custom_model_fwd=model_fwd)


def pipelined_module_names(pipeline: TrainPipelineSparseDist) -> list[str]:
    """The sharded modules the pipeline rewrote (their input distribution runs a batch ahead),
    by their names in the model. The pipeline keeps them in `_pipelined_modules` (no public
    accessor); each one's forward is then TorchRec's PipelinedForward, whose `name` is public."""
    return sorted(str(m.forward.name) for m in pipeline._pipelined_modules)
