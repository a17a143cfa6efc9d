"""TorchRec's train pipeline in the Lightning loop (`distributed.train_pipeline: sparse_dist`).

`TrainPipelineSparseDist` runs three batches at once: batch i's forward, backward and optimizer
step; batch i+1's input distribution (the all-to-alls that send each id to the rank holding its
table rows); batch i+2's copy to the device. It finds what to pipeline by tracing `model(batch)`
with torch.fx: every sharded table called on a KeyedJaggedTensor read straight off the batch.
`SeqRecModel.forward` is that call (the item table on `SeqBatch.item_lookup`, the user table on
`user_lookup`), so the batch must carry every id the step looks up, including the retrieval loss's
negatives: the loader draws them (training/data.py `Lookups`), the step reads the rows `forward`
returned (tasks/base.py `forward_sequences(looked=...)`). Content-feature tables are not
pipelined: their ids come from the item buffers inside the step, so they run as before.

Lightning side. The pipeline pulls batches two ahead of the step it trains, so Lightning must not
iterate the loader itself: it would count the prefetched batches and end the epoch two steps
early (its fetcher is "done" once it has fetched len(loader) batches). Lightning iterates
`StepTickets` instead: one ticket per batch of the wrapped loader, forwarding `set_epoch`/`skip`
(resume) to it, while the pipeline pulls the real batches from the iterator the tickets opened.
`PipelinedRecModule` (manual optimization) runs one `progress()` per ticket. Backward goes
through `manual_backward`, so the strategy's dense all-reduce and the precision plugin run as in
the plain loop; the fused table optimizer still updates the tables inside backward. At the end of
each epoch (and of fit) the pipeline is detached (the tables' own forwards restored: validation
calls them) and dropped; the next step builds a new one. Batches it had prefetched past a
`limit_train_batches` or `max_steps` cut are dropped with it, as Lightning's own loop never
fetches them.

On CPU there are no streams (gloo runs the collectives it is handed on its own threads); the
pipelined steps equal the plain loop's on the same batches (tests/distributed/test_train_pipeline.py).
It is meant for GPUs, where the input distribution runs on its own CUDA stream; that has not been
measured here (bench/gpu_check.sh).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from unirec_dist.training.module import RecModule

log = logging.getLogger(__name__)


def make_pipeline(model: torch.nn.Module, optimizer: Any, device: torch.device,
                  step_loss: Callable[[Any], tuple[torch.Tensor, Any]],
                  backward: Callable[[torch.Tensor], None]) -> Any:
    """A TrainPipelineSparseDist over `model` (the DMP) whose forward is `step_loss(batch) ->
    (loss, output)` and whose backward is `backward(loss)` (Lightning's manual_backward)."""
    from torchrec.streamable import Pipelineable

    from unirec_dist.compat.torchrec_api import sparse_dist_pipeline
    from unirec_dist.data.batch import SeqBatch

    # SeqBatch has Pipelineable's two methods (to, record_stream); registered here so that
    # data/batch.py does not import torchrec
    Pipelineable.register(SeqBatch)
    return sparse_dist_pipeline(model, optimizer, device, step_loss, backward)


class StepTickets:
    """What Lightning iterates in a pipelined run: 0, 1, ... one ticket per batch the wrapped
    loader yields this epoch; `current` is the loader's iterator for that epoch (the pipeline's
    source). `set_epoch`/`skip` (Lightning's per-epoch call and the checkpoint resume) go to the
    loader, which applies them when its iterator starts."""

    def __init__(self, batches: Any) -> None:
        self.batches = batches
        self.current: Any = None

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def sampler(self) -> "StepTickets":
        return self   # Lightning calls `<loader>.sampler.set_epoch(epoch)` before each epoch

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def skip(self, n: int) -> None:
        self.batches.skip(n)

    def __iter__(self):
        # a generator, like the loader's: Lightning calls iter() more than once up front; the
        # loader's own iterator takes its epoch and skip when the pipeline first pulls from it
        n = self.batches.pending()
        self.current = iter(self.batches)
        yield from range(n)


class PipelinedRecModule(RecModule):
    """RecModule whose training step is one `TrainPipelineSparseDist.progress()` (see module doc).

    Needs the TorchRecStrategy (its DMP) and, as its train loader, `StepTickets` over batches with
    lookups (SequenceBatches(lookups=...)). `pipelined` names the modules the pipeline rewrote.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False
        self._pipeline: Any = None
        self.pipelined: list[str] = []

    def _step_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        from unirec_dist.training.strategy import common_pad_width

        common_pad_width(batch)
        looked = self.model(batch)
        loss, parts = self.task.loss(self.model, batch, looked=looked)
        positions = int((batch.seq["item"].lengths() - 1).clamp(min=0).sum())
        return loss, {"loss": loss.detach(), "parts": parts, "rows": len(batch), "positions": positions}

    def training_step(self, ticket, batch_idx: int):  # type: ignore[override]
        from unirec_dist.compat.lightning_api import train_loader_of

        tickets = train_loader_of(self)
        if not isinstance(tickets, StepTickets):
            raise TypeError("a PipelinedRecModule trains from StepTickets (training/pipeline.py)")
        if self._pipeline is None:
            self._pipeline = make_pipeline(self.trainer.strategy.dmp, self.optimizers(), self.device,
                                           self._step_loss, self.manual_backward)
        out = self._pipeline.progress(tickets.current)
        if not self.pipelined:
            from unirec_dist.compat.torchrec_api import pipelined_module_names

            self.pipelined = pipelined_module_names(self._pipeline)
            log.info("train pipeline: input distribution one batch ahead for %s",
                     ", ".join(self.pipelined) or "no module")
            # recorded in every checkpoint's manifest from now on
            extra = getattr(self.trainer.strategy, "manifest_extra", None)
            if extra is not None:
                extra["train_pipeline"] = {"kind": "sparse_dist", "pipelined": self.pipelined}
        self.log("train/loss", out["loss"], prog_bar=True, on_step=True, on_epoch=True, batch_size=out["rows"])
        if len(out["parts"]) > 1:
            for k, v in out["parts"].items():
                self.log(f"train/{k}", v, on_step=False, on_epoch=True, batch_size=out["rows"])
        return {"loss": out["loss"], "positions": out["positions"]}

    def detach_pipeline(self) -> None:
        """Restore the tables' own forwards (validation, evaluation after fit call them) and drop
        the pipeline with any batches it prefetched; the next step builds a new one. (TorchRec's
        `attach` would re-use it, but in torchrec 1.8 a re-attached pipeline with batches in
        flight ran a sequence table's output all-to-all before that batch's input splits were
        known: gloo failed on the sizes.)"""
        if self._pipeline is not None:
            self._pipeline.detach()
            self._pipeline = None

    def on_train_epoch_end(self) -> None:
        self.detach_pipeline()
        super().on_train_epoch_end()

    def on_train_end(self) -> None:
        self.detach_pipeline()
