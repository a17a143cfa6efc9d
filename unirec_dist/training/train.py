"""Single-process training: `train(cfg) -> checkpoint dir`.

Output layout under trainer.out_dir::

    checkpoints/last/   DCP checkpoint + manifest.json (kind "train"), every
                        trainer.checkpoint_every_n_epochs epochs and at the end
    checkpoints/best/   the checkpoint with the best validation NDCG@10 so far
    logs/               Lightning CSV (metrics.csv) and TensorBoard logs
    metrics.json        final/best validation metrics and wall time

Checkpoints use `unirec_dist.checkpoint.dcp.save_checkpoint` with the state layout of
`training.build.checkpoint_state`, the same as the distributed writers, so every reader
(`load_retriever`, evaluation, export, finetune) sees one format.
"""
from __future__ import annotations

import datetime
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unirec_dist.config.loader import to_dict
from unirec_dist.config.train import TrainConfig

log = logging.getLogger(__name__)


def _make_callbacks():
    from lightning.pytorch.callbacks import Checkpoint

    class DCPCheckpoint(Checkpoint):
        """Saves DCP checkpoints (last + best by val NDCG@10) after the module's epoch-end
        validation (a Checkpoint subclass runs after LightningModule.on_train_epoch_end).

        A distributed strategy may provide `unirec_checkpoint_state(module) -> state` and
        `unirec_plan` attributes; the single-process default is `checkpoint_state(model, opt)`.
        """

        def __init__(self, root: Path, cfg: TrainConfig, dataset: dict[str, Any], every: int) -> None:
            self.root, self.cfg, self.dataset, self.every = root, cfg, dataset, every
            self.best = float("-inf")
            self.best_path: Path | None = None
            self.last_path: Path | None = None
            self._saved_epoch = -1

        def _save(self, trainer, module, name: str) -> Path:
            from unirec_dist.checkpoint.dcp import save_checkpoint
            from unirec_dist.training.build import checkpoint_state

            loop = {"epoch": trainer.current_epoch, "step": trainer.global_step}
            custom = getattr(trainer.strategy, "unirec_checkpoint_state", None)
            if callable(custom):
                state = custom(module)
            else:
                opt = trainer.optimizers[0] if trainer.optimizers else None
                state = checkpoint_state(module.model, opt, loop)
            manifest = {
                "kind": "train",
                "config": to_dict(self.cfg),
                "dataset": self.dataset,
                "plan": getattr(trainer.strategy, "unirec_plan", None),
                "step": trainer.global_step,
                "epoch": trainer.current_epoch,
                "metrics": dict(module.last_metrics),
            }
            return save_checkpoint(self.root / name, state, manifest)

        def on_train_epoch_end(self, trainer, module) -> None:
            ep = trainer.current_epoch
            m = module.last_metrics
            validated_now = m and getattr(module, "_validated_epoch", None) == ep
            if validated_now and m.get("NDCG@10", float("-inf")) > self.best:
                self.best = m["NDCG@10"]
                self.best_path = self._save(trainer, module, "best")
            if self.every and (ep + 1) % self.every == 0:
                self.last_path = self._save(trainer, module, "last")
                self._saved_epoch = ep

        def on_train_end(self, trainer, module) -> None:
            if self._saved_epoch != trainer.current_epoch - 1 or self.last_path is None:
                self.last_path = self._save(trainer, module, "last")

    return DCPCheckpoint


def _quiet() -> None:
    import warnings

    # single-process DCP saves and Lightning's pytree shim warn on every call; both are expected
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


@dataclass
class TrainingSetup:
    """Everything a training loop needs, built the same way for 1 process and N workers.

    module:   RecModule (LightningModule) over the plain single-device model
    batches:  SequenceBatches for this rank's disjoint slice
    dataset:  the checkpoint manifest's "dataset" section
    """

    cfg: TrainConfig
    path: Path
    manifest: dict[str, Any]
    module: Any
    batches: Any
    dataset: dict[str, Any]


def check_inputs(cfg: TrainConfig) -> tuple[Path, dict[str, Any]]:
    """Every user-fixable problem, before any work: dataset dir/version, features, device."""
    from unirec_dist.embeddings.features import FeatureSpec
    from unirec_dist.training.data import open_prepared
    from unirec_dist.utils.device import resolve_device

    path, ds_manifest = open_prepared(cfg.data.path)
    resolve_device(cfg.trainer.device)
    FeatureSpec.from_manifest(ds_manifest, where=str(path / "manifest.json")).item_features(
        cfg.model.embedding.item_features)
    return path, ds_manifest


def setup_training(cfg: TrainConfig, rank: int = 0, world_size: int = 1,
                   model_device: str | None = None, table_device: str | None = None) -> TrainingSetup:
    """Build data, model, task and LightningModule. `rank/world_size` slice the training users
    (disjoint, equal step counts); `model_device="meta"` builds the model unallocated for a
    sharding strategy (call `module.model.embedding.set_item_features(items)` after it is
    materialised); `table_device="meta"` builds only the embedding tables unallocated (content
    buffers are filled here). Validation is sharded by the metrics code when a process group exists."""
    import pyarrow.parquet as pq

    from unirec_dist.training.build import build_from_config, build_task, dataset_section
    from unirec_dist.training.data import SequenceBatches, read_valid, train_source
    from unirec_dist.training.module import RecModule

    path, ds_manifest = check_inputs(cfg)
    source = train_source(path, cfg.data)
    if "rating" in cfg.task.active_tasks and not source.has_ratings:
        from unirec_dist.errors import ConfigError

        raise ConfigError(f"task.kind: the rating task needs ratings, but {path}/train.parquet has none")
    n_vocab = int(ds_manifest["vocab_sizes"]["item"])
    batches = SequenceBatches(source, cfg.data.batch_size, cfg.data.max_len, seed=cfg.trainer.seed,
                              length_grouped=cfg.data.length_grouped, rank=rank, world_size=world_size,
                              buffer_batches=cfg.data.buffer_batches)
    model = build_from_config(cfg, ds_manifest, device=model_device, table_device=table_device)
    if model_device != "meta":
        model.embedding.set_item_features(pq.read_table(path / "items.parquet"))
    task = build_task(cfg.task, ds_manifest, source.item_counts(n_vocab))
    valid = read_valid(path, cfg.data.valid_max_users, seed=cfg.trainer.seed)
    module = RecModule(cfg, model, task, valid, n_items=n_vocab - 1)
    log.info("training %s on %s: %d sequences (%s), %d items, %d parameters, %d batches/epoch",
             cfg.name, path, source.n_rows, "in memory" if source.in_memory else "streamed", n_vocab - 1, sum(p.numel() for p in model.parameters()), len(batches))
    return TrainingSetup(cfg, path, ds_manifest, module, batches, dataset_section(path, ds_manifest))


def dcp_checkpoint_callback(cfg: TrainConfig, dataset: dict[str, Any]):
    """The Lightning callback that writes DCP checkpoints (last + best) under out_dir/checkpoints."""
    DCPCheckpoint = _make_callbacks()
    return DCPCheckpoint(Path(cfg.trainer.out_dir) / "checkpoints", cfg, dataset,
                         cfg.trainer.checkpoint_every_n_epochs)


def train(cfg: TrainConfig) -> Path:
    """Train on one process (CPU, or one GPU when trainer.device allows) and return the
    checkpoint directory to use downstream (best by validation NDCG@10, else last)."""
    from unirec_dist.utils.device import configure_cpu, resolve_device

    t0 = time.perf_counter()
    _quiet()
    check_inputs(cfg)
    device = resolve_device(cfg.trainer.device)

    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    configure_cpu(cfg.trainer.threads if device.type == "cpu" else None)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    st = setup_training(cfg)
    module, batches = st.module, st.batches

    out = Path(cfg.trainer.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loggers = []
    if "csv" in cfg.trainer.loggers:
        loggers.append(CSVLogger(save_dir=str(out), name="logs", version=""))
    if "tensorboard" in cfg.trainer.loggers:
        loggers.append(TensorBoardLogger(save_dir=str(out), name="logs", version="tb"))
    ckpt = dcp_checkpoint_callback(cfg, st.dataset)
    callbacks = [ckpt]
    if cfg.trainer.early_stop_patience is not None:
        callbacks.append(EarlyStopping(monitor="val/NDCG@10", mode="max", strict=False,
                                       patience=cfg.trainer.early_stop_patience, check_on_train_epoch_end=True))
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=cfg.trainer.max_epochs,
        max_steps=cfg.trainer.max_steps,
        max_time=None if cfg.trainer.max_minutes is None else datetime.timedelta(minutes=cfg.trainer.max_minutes),
        logger=loggers or False,
        callbacks=callbacks,
        enable_checkpointing=True,   # our DCPCheckpoint is the only Checkpoint callback
        enable_progress_bar=cfg.trainer.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        limit_train_batches=cfg.trainer.limit_train_batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        precision=cfg.trainer.precision,
        default_root_dir=str(out),
    )
    trainer.fit(module, train_dataloaders=batches)
    result = ckpt.best_path or ckpt.last_path
    summary = {
        "checkpoint": str(result),
        "last": str(ckpt.last_path),
        "best": str(ckpt.best_path) if ckpt.best_path else None,
        "best_val_NDCG@10": ckpt.best if ckpt.best_path else None,
        "last_val": module.last_metrics,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    log.info("done in %.1f s; checkpoint %s", summary["seconds"], result)
    return Path(result)
