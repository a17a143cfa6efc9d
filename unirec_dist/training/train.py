"""Single-process training: `train(cfg, overwrite=False, resume=False) -> checkpoint dir`.

Output layout under trainer.out_dir::

    checkpoints/step-<N>/   checkpoints in the one layout of `unirec_dist.checkpoint.dcp`
                            (kind "train"), every trainer.checkpoint_every_n_epochs epochs and at
                            the end; the newest trainer.keep_last are kept, plus the pointers' targets
    checkpoints/last        pointer to the newest one
    checkpoints/best        pointer to the best by validation NDCG@10 so far
    logs/                   Lightning CSV (metrics.csv) and TensorBoard logs
    mlruns/                 MLflow's local store (trainer.loggers: [mlflow], training/tracking.py)
    metrics.json            final/best validation metrics and wall time

An out_dir that already holds a run is refused unless `overwrite` (its checkpoints, logs and
metrics are removed first) or `resume` (training continues from the newest checkpoint: model,
optimizer, RNG and loop state, so 2 + 2 epochs equal 4 straight epochs).

`make_trainer` and `training.checkpointing.CheckpointCallback` are shared with fine-tuning.
"""
from __future__ import annotations

import datetime
import functools
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unirec_dist.config.loader import to_dict
from unirec_dist.config.train import TrainConfig, resolve_val_mask_seen

log = logging.getLogger(__name__)


def _quiet() -> None:
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
    batches:  SequenceBatches for this rank's disjoint slice (StepTickets over them for the train
              pipeline: what Lightning iterates)
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
    from unirec_dist.training.data import check_times, open_prepared
    from unirec_dist.training.tracking import check_tracking
    from unirec_dist.utils.device import resolve_device

    path, ds_manifest = open_prepared(cfg.data.path)
    if cfg.model.encoder.uses_times:
        check_times(path, ds_manifest)
    resolve_device(cfg.trainer.device)
    check_tracking(cfg)
    FeatureSpec.from_manifest(ds_manifest, where=str(path / "manifest.json")).item_features(
        cfg.model.embedding.item_features)
    return path, ds_manifest


def apply_val_mask_seen(cfg: TrainConfig, ds_manifest: dict[str, Any]) -> None:
    """Set trainer.val_mask_seen to its resolved value (so checkpoints record it) and say why."""
    cfg.trainer.val_mask_seen, why = resolve_val_mask_seen(cfg.trainer, ds_manifest)
    log.info("validation %s seen items: %s", "masks" if cfg.trainer.val_mask_seen else "does not mask", why)


def setup_training(cfg: TrainConfig, rank: int = 0, world_size: int = 1,
                   model_device: str | None = None, table_device: str | None = None,
                   train_pipeline: bool = False) -> TrainingSetup:
    """Build data, model, task and LightningModule. `rank/world_size` slice the training users
    (disjoint, equal step counts); `model_device="meta"` builds the model unallocated for a
    sharding strategy (call `module.model.embedding.set_item_features(items)` after it is
    materialised); `table_device="meta"` builds only the embedding tables unallocated (content
    buffers are filled here). Validation is sharded by the metrics code when a process group exists.
    `train_pipeline`: TorchRec's train pipeline (training/pipeline.py; needs TorchRecStrategy):
    batches carry their lookups and negatives, the module is a PipelinedRecModule."""
    import pyarrow.parquet as pq

    from unirec_dist.models.factory import build_from_config, dataset_section
    from unirec_dist.tasks.sequence import build_task
    from unirec_dist.training.data import Lookups, SequenceBatches, read_valid, train_source
    from unirec_dist.training.module import RecModule

    path, ds_manifest = check_inputs(cfg)
    apply_val_mask_seen(cfg, ds_manifest)
    source = train_source(path, cfg.data, with_times=cfg.model.encoder.uses_times)
    for name, objective in cfg.task.objectives().items():
        if objective.needs_ratings and not source.has_ratings:
            from unirec_dist.errors import ConfigError

            raise ConfigError(f"task.kind: the {name} task needs ratings, but {path}/train.parquet has none")
    n_vocab = int(ds_manifest["vocab_sizes"]["item"])
    model = build_from_config(cfg, ds_manifest, device=model_device, table_device=table_device)
    lookups = None
    if train_pipeline:
        r = cfg.task.retrieval
        lookups = Lookups(r.num_negatives, r.negatives_group, n_vocab, users=model.encoder.needs_user_vectors)
    batches: Any = SequenceBatches(source, cfg.data.batch_size, cfg.data.max_len, seed=cfg.trainer.seed,
                              length_grouped=cfg.data.length_grouped, rank=rank, world_size=world_size,
                              buffer_batches=cfg.data.buffer_batches, lookups=lookups)
    if model_device != "meta":
        model.embedding.set_item_features(pq.read_table(path / "items.parquet"))
    task = build_task(cfg.task, ds_manifest, source.item_counts(n_vocab))
    # read when validation first runs: a run that never validates holds none of the valid split
    load_valid = functools.partial(read_valid, path, cfg.data.valid_max_users, seed=cfg.trainer.seed,
                                   times=cfg.model.encoder.uses_times)
    module_class = RecModule
    if train_pipeline:
        from unirec_dist.training.pipeline import PipelinedRecModule

        module_class = PipelinedRecModule
    module = module_class(cfg, model, task, load_valid, n_items=n_vocab - 1)
    if train_pipeline:
        from unirec_dist.training.pipeline import StepTickets

        batches = StepTickets(batches)
    log.info("training %s on %s: %d sequences (%s), %d items, %d parameters, %d batches/epoch",
             cfg.name, path, source.n_rows, "in memory" if source.in_memory else "streamed", n_vocab - 1, sum(p.numel() for p in model.parameters()), len(batches))
    return TrainingSetup(cfg, path, ds_manifest, module, batches, dataset_section(path, ds_manifest))


def make_loggers(cfg: TrainConfig, dataset: dict[str, Any]) -> list[Any]:
    """The Lightning loggers trainer.loggers names, writing under trainer.out_dir (logs/metrics.csv,
    logs/tb/, and MLflow: `training.tracking`); `dataset` is the checkpoint manifest's section."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    t = cfg.trainer
    out = str(Path(t.out_dir))
    loggers: list[Any] = []
    if "csv" in t.loggers:
        loggers.append(CSVLogger(save_dir=out, name="logs", version=""))
    if "tensorboard" in t.loggers:
        loggers.append(TensorBoardLogger(save_dir=out, name="logs", version="tb"))
    if "mlflow" in t.loggers:
        from unirec_dist.training.tracking import mlflow_logger

        loggers.append(mlflow_logger(cfg, dataset))
    return loggers


def make_trainer(cfg: TrainConfig, device: torch.device, manifest: dict[str, Any], monitor: str,
                 mode: str):
    """The Lightning Trainer of single-process train and finetune, and its checkpoint callback:
    step folders under out_dir/checkpoints, `best` by validation `monitor` (`mode` max/min),
    early stopping on it when configured. Returns (trainer, callback)."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping

    from unirec_dist.training.checkpointing import CheckpointCallback, SingleDeviceDCPStrategy

    t = cfg.trainer
    out = Path(t.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loggers = make_loggers(cfg, manifest.get("dataset") or {})
    ckpt = CheckpointCallback(out / "checkpoints", monitor=monitor, mode=mode,
                              every_n_epochs=t.checkpoint_every_n_epochs, keep_last=t.keep_last)
    callbacks: list[Any] = [ckpt]
    if t.early_stop_patience is not None:
        callbacks.append(EarlyStopping(monitor=f"val/{monitor}", mode=mode, strict=False,
                                       patience=t.early_stop_patience, check_on_train_epoch_end=True))
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        strategy=SingleDeviceDCPStrategy(device=device, manifest=manifest),
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        max_time=None if t.max_minutes is None else datetime.timedelta(minutes=t.max_minutes),
        logger=loggers or False,
        callbacks=callbacks,
        enable_checkpointing=True,   # our CheckpointCallback is the only Checkpoint callback
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        precision=t.precision,
        default_root_dir=str(out),
    )
    return trainer, ckpt


def train(cfg: TrainConfig, overwrite: bool = False, resume: bool = False) -> Path:
    """Train on one process (CPU, or one GPU when trainer.device allows) and return the
    checkpoint directory to use downstream (best by validation NDCG@10, else last).

    `resume`: continue the run in trainer.out_dir from its newest checkpoint; `overwrite`:
    replace the run there. Without either, an out_dir holding a run is refused (RunExistsError).
    """
    from unirec_dist.training.checkpointing import fresh_run, prepare_out_dir

    t0 = time.perf_counter()
    _quiet()
    check_inputs(cfg)
    if cfg.optim.tables not in ("auto", cfg.optim.name):
        from unirec_dist.errors import ConfigError

        raise ConfigError(f"optim.tables: {cfg.optim.tables!r} applies to sharded tables (unirec pretrain); unirec train "
                          f"updates its tables with optim.name ({cfg.optim.name!r}): set optim.tables: auto")
    resume_from = prepare_out_dir(cfg.trainer.out_dir, overwrite, resume)
    with fresh_run(cfg.trainer.out_dir, resume):
        return _train(cfg, resume_from, t0)


def _train(cfg: TrainConfig, resume_from: Path | None, t0: float) -> Path:
    from unirec_dist.utils.device import configure_cpu, resolve_device

    device = resolve_device(cfg.trainer.device)

    import lightning as L

    configure_cpu(cfg.trainer.threads if device.type == "cpu" else None)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    st = setup_training(cfg)
    module, batches = st.module, st.batches
    manifest = {"kind": "train", "config": to_dict(cfg), "dataset": st.dataset}
    trainer, ckpt = make_trainer(cfg, device, manifest, "NDCG@10", "max")
    trainer.fit(module, train_dataloaders=batches, ckpt_path=str(resume_from) if resume_from else None)
    result = ckpt.best_path or ckpt.last_path
    summary = {
        "checkpoint": str(result),
        "last": str(ckpt.last_path),
        "best": str(ckpt.best_path) if ckpt.best_path else None,
        "best_val_NDCG@10": ckpt.best,
        "last_val": module.last_metrics,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "resumed_from": str(resume_from) if resume_from else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    out = Path(cfg.trainer.out_dir)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    from unirec_dist.training.tracking import log_final_metrics

    log_final_metrics(trainer.loggers, summary)
    log.info("done in %.1f s; checkpoint %s", summary["seconds"], result)
    return Path(result)
