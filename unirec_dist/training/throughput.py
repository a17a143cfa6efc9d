"""The pretraining workers' throughput figures (a Lightning callback), in its own module so that
`training/pretrain.py` imports Lightning only inside the workers."""
from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback


class TrainThroughput(Callback):
    """Per worker: target positions trained and the wall/CPU seconds of the steps after `warmup`
    (published in the strategy's `extra_stats`, so they reach pretrain.json's worker_stats).

    A target position is every position of a sequence that predicts a next item (length - 1).
    """

    def __init__(self, warmup: int = 3) -> None:
        self.warmup = warmup
        self.positions = 0
        self.steps = 0
        self._t0: float | None = None
        self._c0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None and trainer.global_step >= self.warmup:
            self._t0, self._c0 = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._t0 is None:
            return
        seq = getattr(batch, "seq", None)
        if isinstance(outputs, dict) and "positions" in outputs:
            # the train pipeline's step: `batch` is the one it fetched ahead, not the one it trained
            self.positions += int(outputs["positions"])
        elif seq is not None:
            self.positions += int((seq["item"].lengths() - 1).clamp(min=0).sum())
        self.steps += 1
        stats = getattr(trainer.strategy, "extra_stats", None)
        if stats is not None:
            stats.update(timed_steps=self.steps, positions=self.positions,
                         train_s=time.perf_counter() - self._t0, train_cpu_s=time.process_time() - self._c0)
