"""The LightningModule: thin glue between a model, its task and Lightning's loop.

training_step: task.loss(model, batch). Validation: full-ranking HR@10 / NDCG@10 on the
validation queries (all items ranked; history items masked only with trainer.val_mask_seen),
computed once per validation epoch with `unirec_dist.metrics.evaluate_table` over the whole
query table (sharded over ranks and all-reduced when a process group exists). The queries are
read the first time validation runs (`load_valid`), so a run whose validation never comes
reads nothing of the valid split and holds none of it. The distributed
strategy may replace `self.model` with a sharded wrapper in `configure_model`; nothing here
assumes a plain module.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import lightning as L
import pyarrow as pa
import torch

from unirec_dist.config.train import TrainConfig

log = logging.getLogger(__name__)

VAL_KS = (10,)


class RecModule(L.LightningModule):
    """LightningModule over (model, task); logs train/loss, val/HR@10, val/NDCG@10."""

    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, task,
                 load_valid: Callable[[], pa.Table] | None = None, n_items: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = model
        self.task = task
        self._load_valid = load_valid
        self._valid: pa.Table | None = None
        self.n_items = n_items           # catalogue size N (ids 1..N)
        self.best_ndcg = float("-inf")
        self.last_metrics: dict[str, float] = {}
        self._validated_epoch = -1
        self._t0: float | None = None

    @property
    def valid(self) -> pa.Table | None:
        """The validation queries, read by `load_valid` on first use and kept (None: none)."""
        if self._valid is None and self._load_valid is not None:
            self._valid = self._load_valid()
        return self._valid

    def forward(self, batch):
        return self.model.query_embeddings(batch)

    def on_fit_start(self) -> None:
        self._t0 = time.perf_counter()

    def training_step(self, batch, batch_idx: int):
        loss, parts = self.task.loss(self.model, batch)
        bs = len(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        if len(parts) > 1:
            for k, v in parts.items():
                self.log(f"train/{k}", v, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def run_validation(self) -> dict[str, float]:
        """Full-ranking metrics on the validation queries (collective when distributed)."""
        if self.valid is None or self.valid.num_rows == 0:
            return {}
        model = self.model
        was = model.training
        model.eval()
        try:
            from unirec_dist.metrics.evaluate import evaluate_table

            assert self.n_items is not None, "validation queries without n_items"
            return evaluate_table(model, self.valid, self.n_items, ks=VAL_KS,
                                  mask_seen=bool(self.cfg.trainer.val_mask_seen),
                                  batch_size=self.cfg.data.valid_batch_size, progress=False)
        finally:
            model.train(was)

    # Validation runs as one pass over the query table at the end of the epoch, not through a
    # val dataloader: the item matrix is computed once and the metric code is shared with
    # `unirec evaluate`.
    def on_train_epoch_end(self) -> None:
        if (self.current_epoch + 1) % self.cfg.trainer.val_every_n_epochs and \
                self.current_epoch + 1 != self.trainer.max_epochs:
            return
        m = self.run_validation()
        if not m:
            return
        self.last_metrics = {k: float(v) for k, v in m.items()}
        self._validated_epoch = self.current_epoch
        self.log_validation(self.last_metrics)

    def log_validation(self, m: dict[str, float]) -> None:
        """Log one validation result (subclasses with other tasks' metrics override this only)."""
        hr, ndcg = m["HR@10"], m["NDCG@10"]
        self.best_ndcg = max(self.best_ndcg, ndcg)
        # one value per validation (batch_size=1: also what a dataloader_iter step, the train
        # pipeline's, requires Lightning to be told)
        self.log("val/HR@10", hr, prog_bar=True, sync_dist=False, batch_size=1)
        self.log("val/NDCG@10", ndcg, prog_bar=True, sync_dist=False, batch_size=1)
        wall = time.perf_counter() - (self._t0 or time.perf_counter())
        self.log("val/fit_seconds", wall, sync_dist=False, batch_size=1)
        log.info("epoch %d: val HR@10 %.4f NDCG@10 %.4f (%.0f s into fit)", self.current_epoch, hr, ndcg, wall)

    def configure_optimizers(self):
        o = self.cfg.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
        return cls(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)

    # the strategy stores Lightning's checkpoint dict (minus weights) as the checkpoint's JSON loop state
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["unirec_best_ndcg"] = self.best_ndcg

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.best_ndcg = float(checkpoint.get("unirec_best_ndcg", self.best_ndcg))
