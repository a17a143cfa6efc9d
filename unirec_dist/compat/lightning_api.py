"""Private Lightning APIs (see unirec_dist.compat). Imports Lightning when imported."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher, _WorkerOutput

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["NoWeightsHandBackLauncher", "SpawnWithoutWeightsHandBack", "train_loader_of"]


class NoWeightsHandBackLauncher(_MultiProcessingLauncher):
    """Spawn launcher that does not ship rank 0's weights back to the parent process: Lightning
    saves them with torch.save and reloads them with torch.load(weights_only=True), which fails on
    ShardedTensor. The trained state lives in the DCP checkpoints the workers write. Lightning has
    no public switch for the hand-back, so this overrides its private `_collect_rank_zero_results`.
    """

    def _collect_rank_zero_results(self, trainer: "pl.Trainer", results: Any) -> _WorkerOutput | None:
        if self._strategy.local_rank != 0:
            return None
        cb = trainer.checkpoint_callback
        best = getattr(cb, "best_model_path", None) if cb else None
        return _WorkerOutput(best, None, trainer.state, results, self.get_extra_results(trainer))


class SpawnWithoutWeightsHandBack:
    """DDPStrategy mixin: the spawn launcher becomes `NoWeightsHandBackLauncher`, through the
    strategy's private `_configure_launcher` hook (where DDPStrategy picks its launcher)."""

    if TYPE_CHECKING:   # DDPStrategy's own attributes
        _launcher: Any
        _start_method: str

    def _configure_launcher(self) -> None:
        super()._configure_launcher()  # type: ignore[misc]
        if isinstance(self._launcher, _MultiProcessingLauncher):
            self._launcher = NoWeightsHandBackLauncher(self, start_method=self._start_method)


def train_loader_of(module: "pl.LightningModule") -> Any:
    """The train dataloader object the fit loop iterates, or None before `fit` set it up (or
    outside a Trainer). Resuming positions this loader itself, and Lightning exposes it only as
    the fit loop's private `_data_source` (the public `trainer.train_dataloader` is a wrapper
    built later, and `module.trainer` raises when no trainer is attached)."""
    trainer = getattr(module, "_trainer", None)
    source = getattr(getattr(trainer, "fit_loop", None), "_data_source", None)
    return getattr(source, "instance", None) if source is not None else None
