"""Fine-tuning a pretrained checkpoint on a target dataset: `finetune(cfg, from_checkpoint) -> checkpoint dir`.

One process (CPU or one GPU). The pretrained checkpoint may have been written by any number of
workers: its weights are read with `models.factory.load_retriever`, i.e. `checkpoint.dcp.
load_checkpoint` into a plain module (DCP reshards on load).

Steps (every user-fixable problem is found before any training):
1. The architecture (embedding dim, item features, encoder, max_len) comes from the checkpoint's
   manifest; the vocab sizes from the target dataset; task/optim/trainer from the config.
2. Alignment (`data/align.py`): target item rows -> pretrained item rows by raw id, or by a
   key built from raw item-table columns (e.g. title + year). Too little overlap, or aligned items
   that disagree on a shared categorical feature (raw ids naming different items), is an
   `AlignmentError` (one line, CLI exit 2). Users: by raw id (or all new). Content tables:
   categorical/multi rows by raw value (genre names, years); text hash buckets are identical
   when bucket count and tokenizer match, else re-initialised.
3. Weights: known rows keep their pretrained vectors. New item rows get a ZERO id vector when the
   model has content features: the item vector is id + content, so a new item starts exactly at
   its pretrained content embedding (title tokens, genres, year) and fine-tuning learns its id
   residual from there. (A mean of "similar" items' id vectors would add a guess on top of the
   content vector, which already is that mean in a learned form.) Without content features new
   rows keep the default random init. Encoder and dense projections are copied; task heads are
   copied when the checkpoint has them with the same shapes, else freshly initialised.
4. Freezing: `freeze.embeddings` freezes the pretrained rows (new rows still train, through a
   gradient mask); `freeze.encoder` freezes the encoder; `freeze.lr_multipliers` scale optim.lr
   per group (embedding, encoder, head); a multiplier 0 freezes the group.
5. Training reuses the training stack (TrainSequences, SequenceBatches, build_task, RecModule,
   Lightning); validation reports the task's metrics (metrics/tasks.py): retrieval HR/NDCG@10 (full ranking; seen
   items masked only with trainer.val_mask_seen), rating RMSE/MAE, CTR AUC/log-loss; the best
   checkpoint is kept by the first of NDCG@10 (max), RMSE (min), AUC (max) that the task has.

Output under trainer.out_dir: checkpoints/step-<N>/ with the pointers best and last (the layout of
`unirec_dist.checkpoint.dcp`, written by `training.train.make_trainer`'s callback; manifest kind "finetune", whose
"config" is the effective TrainConfig, so `unirec evaluate/export` read it like any training
checkpoint, and whose "finetune" section names the source checkpoint and the alignment stats),
logs/, metrics.json (best/last validation and test metrics of the returned checkpoint).
"""
from __future__ import annotations

import copy
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pyarrow.parquet as pq
import torch

from unirec_dist.checkpoint.dcp import read_manifest, resolve_checkpoint
from unirec_dist.config.finetune import FinetuneConfig
from unirec_dist.config.loader import from_dict, to_dict
from unirec_dist.config.train import DataSection, TrainConfig
from unirec_dist.data import align as A
from unirec_dist.data.align import copy_rows
from unirec_dist.data.dataset import PreparedDataset
from unirec_dist.embeddings.features import FeatureSpec
from unirec_dist.errors import CheckpointError, ConfigError
from unirec_dist.metrics.tasks import evaluate_checkpoint, monitor_of, task_metrics
from unirec_dist.models.factory import build_from_config, dataset_section, load_retriever
from unirec_dist.tasks.sequence import build_task
from unirec_dist.training.checkpointing import fresh_run, prepare_out_dir
from unirec_dist.training.data import (
    MemorySource,
    SequenceBatches,
    TrainSequences,
    check_times,
    open_prepared,
    read_valid,
)
from unirec_dist.training.module import RecModule
from unirec_dist.training.tracking import check_tracking, log_final_metrics
from unirec_dist.training.train import _quiet, apply_val_mask_seen, make_trainer
from unirec_dist.utils.device import configure_cpu, resolve_device

log = logging.getLogger(__name__)

ITEM_W = "embedding.item_ec.embeddings.t_item.weight"
USER_W = "embedding.user_ec.embeddings.t_user.weight"
CONTENT_W = "embedding.content_ebc.embedding_bags.t_{}.weight"


class AlignmentError(CheckpointError):
    """The target vocabulary cannot be aligned to the pretrained one."""


# ----------------------------------------------------------------------------- planning
@dataclass
class Plan:
    """Everything decided before training: configs, datasets, index maps, stats."""

    cfg: FinetuneConfig
    ckpt: Path
    ckpt_manifest: dict[str, Any]
    train_cfg: TrainConfig                      # the effective config (architecture from the checkpoint)
    target: Any                                 # PreparedDataset
    maps: dict[str, np.ndarray] = field(default_factory=dict)   # state key -> row map
    stats: dict[str, Any] = field(default_factory=dict)


def _pretrained_config(ckpt: Path) -> tuple[dict[str, Any], TrainConfig]:
    manifest = read_manifest(ckpt)
    if "config" not in manifest or "dataset" not in manifest:
        raise CheckpointError(f"{ckpt}: manifest has no config/dataset; not a training checkpoint")
    try:
        pcfg = from_dict(TrainConfig, manifest["config"], where=f"{ckpt}/manifest.json config")
    except ConfigError as e:
        raise CheckpointError(f"{ckpt}: the checkpoint's config does not load with this version: {e}") from None
    return manifest, pcfg


def _model_features(pcfg: TrainConfig, ckpt_manifest: dict[str, Any], target_manifest: dict[str, Any],
                    where: str) -> list[Any]:
    """The pretrained model's item features, checked against the target dataset's."""
    src = FeatureSpec.from_manifest(ckpt_manifest["dataset"], where="checkpoint manifest dataset")
    feats = src.item_features(pcfg.model.embedding.item_features)
    tgt = {f.name: f for f in FeatureSpec.from_manifest(target_manifest, where=where).features if f.table == "items"}
    for f in feats:
        t = tgt.get(f.name)
        if t is None:
            raise AlignmentError(f"{where}: the pretrained model uses item feature {f.name!r}, which the target "
                                 f"dataset does not have; prepare the target with the same item features")
        if t.kind != f.kind:
            raise AlignmentError(f"{where}: item feature {f.name!r} is {t.kind} in the target but {f.kind} in the "
                                 "pretrained model")
        if f.kind == "dense" and t.dim != f.dim:
            raise AlignmentError(f"{where}: dense item feature {f.name!r} has dim {t.dim} in the target but "
                                 f"{f.dim} in the pretrained model")
    return feats


def _effective_config(cfg: FinetuneConfig, pcfg: TrainConfig, feature_names: list[str]) -> TrainConfig:
    model = copy.deepcopy(pcfg.model)
    model.embedding.item_features = list(feature_names)
    max_len = pcfg.data.max_len
    if cfg.data.max_len is not None and cfg.data.max_len != max_len:
        if model.encoder.encoder_class.fixed_max_len:
            raise ConfigError(f"data.max_len: the pretrained {model.encoder.kind} encoder reads {max_len} items "
                              f"(its position table); leave data.max_len unset or set it to {max_len}")
        max_len = cfg.data.max_len
    d = cfg.data
    data = DataSection(path=d.path, train_on=d.train_on, max_len=max_len, batch_size=d.batch_size,
                       length_grouped=d.length_grouped, valid_batch_size=d.valid_batch_size,
                       valid_max_users=d.valid_max_users)
    eff = TrainConfig(data=data, name=cfg.name, model=model, task=copy.deepcopy(cfg.task),
                      optim=copy.deepcopy(cfg.optim), trainer=copy.deepcopy(cfg.trainer))
    # round trip through the strict loader: runs every validate() (e.g. ctr needs a sequence encoder)
    return from_dict(TrainConfig, to_dict(eff), where="finetune config (with the pretrained model)")


def _source_dataset(cfg: FinetuneConfig, ckpt: Path, ckpt_manifest: dict[str, Any]):
    path = cfg.init.source_data or (ckpt_manifest.get("dataset") or {}).get("path")
    if not path:
        raise AlignmentError(f"{ckpt}: the manifest names no pretraining dataset; set init.source_data")
    if not Path(path).is_dir():
        raise AlignmentError(f"the pretraining dataset {path} (named by {ckpt}) does not exist; its vocab is needed "
                             "to align the target: set init.source_data to its prepared directory")
    src = PreparedDataset.open(path)
    want = (ckpt_manifest.get("dataset") or {}).get("vocab_hash")
    if src.vocab_hash != want:
        raise AlignmentError(f"{path}: vocab_hash {str(src.vocab_hash)[:12]} is not the one the checkpoint was "
                             f"trained on ({str(want)[:12]}); set init.source_data to the pretraining dataset")
    return src


def _share(m: np.ndarray) -> dict[str, Any]:
    n = len(m) - 1
    k = int((m[1:] >= 0).sum())
    return {"rows": n, "matched": k, "new": n - k, "overlap": round(k / n, 4) if n else 0.0}


def align(cfg: FinetuneConfig, ckpt_manifest: dict[str, Any], ckpt: Path, target, feats: list[Any],
          user_table: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Row maps for every embedding table of the model (state key -> (n_target_rows,) int64)."""
    ini = cfg.init
    source = _source_dataset(cfg, ckpt, ckpt_manifest)
    n_t, n_s = target.n_items + 1, source.n_items + 1
    where = str(target.root)
    if ini.align == "raw_id":
        item_map = A.vocab_map(target.vocab("item"), source.vocab("item"), n_t, n_s)
    else:
        tk = A.item_keys(target, ini.align_column, where)
        sk = A.item_keys(source, ini.align_column, str(source.root))
        item_map = A.key_map(tk, sk)
    items = _share(item_map)
    how = "raw item id" if ini.align == "raw_id" else "item column(s) " + "+".join(ini.align_column)
    if items["overlap"] < ini.min_overlap:
        raise AlignmentError(
            f"{where}: the target vocab cannot be aligned to the pretrained one: {items['matched']} of "
            f"{items['rows']} items ({items['overlap']:.1%}) match by {how}, below init.min_overlap "
            f"{ini.min_overlap:.0%}" + ("; try init.align=column (e.g. align_column: [title, year])"
                                        if ini.align == "raw_id" else ""))
    stats: dict[str, Any] = {"mode": ini.align, "columns": list(ini.align_column) if ini.align == "column" else None,
                             "source_dataset": str(source.root), "items": items, "feature_agreement": {}}
    # aligned items must agree on shared categorical features (e.g. year), else the ids name different items
    t_cat = {f["name"] for f in target.features if f.get("table") == "items" and f.get("kind") == "categorical"}
    s_cat = {f["name"] for f in source.features if f.get("table") == "items" and f.get("kind") == "categorical"}
    for name in sorted(t_cat & s_cat):
        chk = A.feature_agreement(target, source, item_map, name)
        stats["feature_agreement"][name] = {"compared": chk.compared, "agree": chk.agree,
                                            "agreement": round(chk.agreement, 4) if chk.compared else None}
        if chk.compared and chk.agreement < ini.min_feature_agreement:
            raise AlignmentError(
                f"{where}: items aligned by {how} disagree on feature {name!r} for {chk.compared - chk.agree} of "
                f"{chk.compared} ({1 - chk.agreement:.0%}): the two datasets' ids name different items "
                f"(init.min_feature_agreement {ini.min_feature_agreement}); align by a column instead")
    maps = {ITEM_W: item_map}
    if user_table:
        if ini.align_users:
            um = A.vocab_map(target.vocab("user"), source.vocab("user"), target.n_users + 1, source.n_users + 1)
        else:
            um = np.full(target.n_users + 1, -1, dtype=np.int64)
            um[0] = 0
        maps[USER_W] = um
        stats["users"] = _share(um)
    stats["content"] = {}
    s_feats = {f["name"]: f for f in source.features}
    t_feats = {f["name"]: f for f in target.features}
    for f in feats:
        if f.kind == "dense":
            continue
        n_rows = int(t_feats[f.name]["cardinality"])
        if f.kind in ("categorical", "multi"):
            m = A.vocab_map(target.vocab(f.name), source.vocab(f.name), n_rows, int(s_feats[f.name]["cardinality"]),
                            labels=True)
        else:   # text: hashed token buckets are the same ids when buckets and tokenizer match
            same = (int(s_feats[f.name]["cardinality"]) == n_rows
                    and s_feats[f.name].get("tokenizer") == t_feats[f.name].get("tokenizer"))
            m = np.arange(n_rows, dtype=np.int64) if same else np.r_[0, np.full(n_rows - 1, -1)].astype(np.int64)
            if not same:
                log.warning("text feature %r: hash buckets/tokenizer differ from the pretrained dataset; its "
                            "token table is re-initialised", f.name)
        maps[CONTENT_W.format(f.name)] = m
        stats["content"][f.name] = _share(m)
    log.info("aligned %s: %d of %d target items (%.1f%%) by %s; %d new", where, items["matched"], items["rows"],
             100 * items["overlap"], how, items["new"])
    return maps, stats


def plan_finetune(cfg: FinetuneConfig, from_checkpoint) -> Plan:
    """All checks and the alignment, before any model is built."""
    ckpt = resolve_checkpoint(from_checkpoint)
    ckpt_manifest, pcfg = _pretrained_config(ckpt)
    path, t_manifest = open_prepared(cfg.data.path)
    if pcfg.model.encoder.uses_times:   # the pretrained encoder reads event times: the target needs them
        check_times(path, t_manifest)
    resolve_device(cfg.trainer.device)
    target = PreparedDataset.open(path)
    feats = _model_features(pcfg, ckpt_manifest, t_manifest, str(path))
    eff = _effective_config(cfg, pcfg, [f.name for f in feats])
    plan = Plan(cfg, ckpt, ckpt_manifest, eff, target)
    if cfg.init.scratch:
        plan.stats = {"scratch": True}
        return plan
    plan.maps, plan.stats = align(cfg, ckpt_manifest, ckpt, target, feats, pcfg.model.user_table)
    plan.stats["scratch"] = False
    return plan


# ----------------------------------------------------------------------------- weights
def init_from_pretrained(model: torch.nn.Module, plan: Plan) -> dict[str, Any]:
    """Copy the pretrained weights into the target-shaped `model` (in place) per the plan's maps."""
    src_model, _ = load_retriever(plan.ckpt)          # DCP load, any writer world size
    src = src_model.state_dict()
    dst = model.state_dict()
    info: dict[str, Any] = {"copied": [], "row_aligned": [], "new": []}
    content = getattr(model.embedding, "has_content", False)
    with torch.no_grad():
        for key, t in dst.items():
            if key.startswith(("embedding.feat_", "embedding.dense_")) and not key.startswith("embedding.dense_proj."):
                continue   # the target's own content buffers (set from its items.parquet)
            if key in plan.maps:
                m = plan.maps[key]
                if key == ITEM_W and plan.cfg.init.new_items == "content" and content:
                    t[torch.from_numpy(np.flatnonzero(m < 0))] = 0.0
                copy_rows(t, src[key], m)
                info["row_aligned"].append(key)
            elif key in src and tuple(src[key].shape) == tuple(t.shape):
                t.copy_(src[key])
                info["copied"].append(key)
            elif key.startswith("heads."):
                info["new"].append(key)
            else:
                got = tuple(src[key].shape) if key in src else None
                raise CheckpointError(f"{plan.ckpt}: weight {key} has shape {got}, the target model needs "
                                      f"{tuple(t.shape)}; the checkpoint does not match its own config")
    new_rows = int((plan.maps[ITEM_W][1:] < 0).sum())
    info["new_item_init"] = ("zero id vector (content embedding carries new items)"
                             if plan.cfg.init.new_items == "content" and content else "random (default init)")
    log.info("initialised from %s: %d tensors copied, %d row-aligned tables, %d new head tensors, %d new items (%s)",
             plan.ckpt, len(info["copied"]), len(info["row_aligned"]), len(info["new"]), new_rows,
             info["new_item_init"])
    return info


def param_group(name: str) -> str:
    if name.startswith("embedding."):
        return "embedding"
    if name.startswith("encoder."):
        return "encoder"
    return "head"


def apply_freeze(model: torch.nn.Module, cfg: FinetuneConfig, maps: dict[str, np.ndarray]) -> dict[str, Any]:
    """requires_grad / gradient masks per the freeze section; returns what was frozen."""
    fz = cfg.freeze
    mult = to_dict(fz.lr_multipliers)
    info: dict[str, Any] = {"frozen": [], "row_masked": {}}
    for name, p in model.named_parameters():
        group = param_group(name)
        if mult[group] == 0 or (group == "encoder" and fz.encoder):
            p.requires_grad_(False)
            info["frozen"].append(name)
        elif group == "embedding" and fz.embeddings:
            m = maps.get(name)
            if m is None or not (m < 0).any():
                p.requires_grad_(False)       # no new rows: the whole table stays pretrained
                info["frozen"].append(name)
            else:
                trainable = torch.from_numpy((m < 0).astype(np.float32)).to(p.device)[:, None]
                p.register_hook(lambda g, w=trainable: g * w.to(device=g.device, dtype=g.dtype))
                info["row_masked"][name] = int((m < 0).sum())
    return info


# ----------------------------------------------------------------------------- training
class FinetuneModule(RecModule):
    """RecModule with the task's own validation metrics and per-group learning rates."""

    def __init__(self, cfg: TrainConfig, model, task, load_valid, n_items: int, ft: FinetuneConfig) -> None:
        super().__init__(cfg, model, task, load_valid, n_items=n_items)
        self.ft = ft
        self.monitor, self.mode = monitor_of(cfg)

    def run_validation(self) -> dict[str, float]:
        if self.valid is None or self.valid.num_rows == 0:
            return {}
        assert self.n_items is not None, "validation queries without n_items"
        return task_metrics(self.model, self.valid, self.cfg, self.n_items,
                            batch_size=self.cfg.data.valid_batch_size, seed=self.cfg.trainer.seed)

    def log_validation(self, m: dict[str, float]) -> None:
        shown = {k: v for k, v in m.items() if k not in ("queries", "rated")}
        for k, v in shown.items():
            self.log(f"val/{k}", v, prog_bar=k == self.monitor, sync_dist=False)
        log.info("epoch %d: val %s", self.current_epoch, " ".join(f"{k} {v:.4f}" for k, v in shown.items()))

    def configure_optimizers(self):
        o = self.cfg.optim
        mult = to_dict(self.ft.freeze.lr_multipliers)
        groups: dict[str, list] = {"embedding": [], "encoder": [], "head": []}
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                groups[param_group(name)].append(p)
        row_frozen = self.ft.freeze.embeddings
        param_groups = [
            {"params": ps, "lr": o.lr * mult[g], "name": g,
             # decoupled weight decay would move frozen (masked) rows
             "weight_decay": 0.0 if (g == "embedding" and row_frozen) else o.weight_decay}
            for g, ps in groups.items() if ps
        ]
        if not param_groups:
            raise ConfigError("freeze: every parameter is frozen; nothing to fine-tune")
        cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
        return cls(param_groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


def subsample(seqs, fraction: float, seed: int):
    """A fixed random share of the training users (whole histories), same for every arm with one seed."""
    if fraction >= 1.0:
        return seqs
    U = len(seqs)
    k = max(1, int(round(U * fraction)))
    return seqs.take(np.sort(np.random.default_rng([seed, 7]).choice(U, k, replace=False)))


def finetune(cfg: FinetuneConfig, from_checkpoint, overwrite: bool = False, resume: bool = False) -> Path:
    """Fine-tune the checkpoint at `from_checkpoint` on cfg.data.path; returns the checkpoint dir
    to use downstream (best by the monitored validation metric, else last).

    `resume`/`overwrite`: as for `training.train.train` (an out_dir holding a run is refused
    without one of them). Resuming re-plans from `from_checkpoint`, then continues the run from
    its newest checkpoint (weights, optimizer, RNG, loop state).
    """
    t0 = time.perf_counter()
    _quiet()
    plan = plan_finetune(cfg, from_checkpoint)
    check_tracking(plan.train_cfg)
    out_dir = Path(plan.train_cfg.trainer.out_dir).resolve()
    if plan.ckpt.resolve().is_relative_to(out_dir):
        raise ConfigError(f"trainer.out_dir {out_dir} holds the checkpoint to fine-tune from ({plan.ckpt}); "
                          "write the fine-tuned run elsewhere")
    resume_from = prepare_out_dir(plan.train_cfg.trainer.out_dir, overwrite, resume)
    with fresh_run(out_dir, resume):
        return _finetune(cfg, plan, resume_from, t0)


def _finetune(cfg: FinetuneConfig, plan: Plan, resume_from: Path | None, t0: float) -> Path:
    """The fine-tuning run itself (see `finetune`)."""
    eff, target = plan.train_cfg, plan.target
    apply_val_mask_seen(eff, target.manifest)
    seqs = TrainSequences.from_dir(target.root, eff.data.train_on, with_times=eff.model.encoder.uses_times)
    for name, objective in eff.task.objectives().items():
        if objective.needs_ratings and seqs.ratings is None:
            raise ConfigError(f"task.kind: the {name} task needs ratings, but {target.root}/train.parquet has none")
    device = resolve_device(eff.trainer.device)
    configure_cpu(eff.trainer.threads if device.type == "cpu" else None)
    L.seed_everything(eff.trainer.seed, workers=True, verbose=False)

    seqs = subsample(seqs, cfg.data.fraction, eff.trainer.seed)
    n_vocab = target.n_items + 1
    batches = SequenceBatches(MemorySource(seqs, eff.data.unit_rows), eff.data.batch_size, eff.data.max_len,
                              seed=eff.trainer.seed, length_grouped=eff.data.length_grouped,
                              buffer_batches=eff.data.buffer_batches)
    model = build_from_config(eff, target.manifest)
    model.embedding.set_item_features(pq.read_table(target.root / "items.parquet"))
    init_info = {"scratch": True} if cfg.init.scratch else init_from_pretrained(model, plan)
    freeze_info = apply_freeze(model, cfg, plan.maps)
    task = build_task(eff.task, target.manifest, seqs.item_counts(n_vocab))
    load_valid = functools.partial(read_valid, target.root, eff.data.valid_max_users, seed=eff.trainer.seed,
                                   times=True, ratings=True)
    module = FinetuneModule(eff, model, task, load_valid, n_vocab - 1, cfg)
    log.info("fine-tuning %s on %s from %s: %d sequences (fraction %.2f), %d items, %d trainable parameters",
             cfg.name, target.root, plan.ckpt, len(seqs), cfg.data.fraction, n_vocab - 1,
             sum(p.numel() for p in model.parameters() if p.requires_grad))

    src_mf = plan.ckpt_manifest
    base_manifest = {
        "kind": "finetune",
        "config": to_dict(eff),
        "dataset": dataset_section(target.root, target.manifest),
        "finetune": {
            "source_checkpoint": str(plan.ckpt.resolve()),
            "source": {"kind": src_mf.get("kind"), "step": src_mf.get("step"), "epoch": src_mf.get("epoch"),
                       "world_size": src_mf.get("world_size"),
                       "dataset": {k: (src_mf.get("dataset") or {}).get(k) for k in ("name", "path", "vocab_hash")}},
            "config": to_dict(cfg),
            "alignment": plan.stats,
            "init": init_info,
            "freeze": {"frozen": len(freeze_info["frozen"]), "row_masked": freeze_info["row_masked"]},
            "train_users": len(seqs),
        },
    }
    trainer, ckpt = make_trainer(eff, device, base_manifest, module.monitor, module.mode)
    trainer.fit(module, train_dataloaders=batches, ckpt_path=str(resume_from) if resume_from else None)
    result = ckpt.best_path or ckpt.last_path
    test = evaluate_checkpoint(result, "test") if target.has_table("test") else None
    summary = {
        "checkpoint": str(result), "last": str(ckpt.last_path),
        "best": str(ckpt.best_path) if ckpt.best_path else None,
        "monitor": module.monitor, "best_val": ckpt.best_metrics or None, "last_val": module.last_metrics,
        "test": test, "alignment": plan.stats, "train_users": len(seqs),
        "epochs": trainer.current_epoch, "steps": trainer.global_step,
        "resumed_from": str(resume_from) if resume_from else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (Path(eff.trainer.out_dir) / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    log_final_metrics(trainer.loggers, summary)
    log.info("done in %.1f s; checkpoint %s", summary["seconds"], result)
    return Path(result)
