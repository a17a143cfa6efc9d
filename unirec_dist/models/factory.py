"""Model construction from config + dataset manifest, and loading a trained model back.

    build_model(model_cfg, dataset_manifest, task_cfg=None, device=None) -> SeqRecModel
    load_retriever(checkpoint, dataset=None) -> (model (eval, CPU), manifest)

Components are picked by name from small explicit maps (the encoder registry in
models/encoders/registry.py; the task registry in tasks/registry.py, whose objectives build their
heads); no import paths in YAML. `device="meta"` builds without
allocating (for DMP to materialise and shard). It lives in models/ so that serving/ and
checkpoint/ rebuild a trained model without importing training/ (tests/unit/test_layers.py).
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import torch
from torch import nn

from unirec_dist.config.loader import from_dict
from unirec_dist.config.train import ModelSection, TaskSection, TrainConfig
from unirec_dist.data.dataset import PreparedDataset
from unirec_dist.embeddings.features import FeatureSpec
from unirec_dist.errors import CheckpointError
from unirec_dist.models.embedding import UniversalEmbedding
from unirec_dist.models.encoders.registry import build_encoder
from unirec_dist.models.seqrec import SeqRecModel

log = logging.getLogger(__name__)

# The model's entry in every checkpoint (see unirec_dist.checkpoint.dcp for the whole layout)
MODEL_KEY = "model"


def build_model(model_cfg: ModelSection, dataset_manifest: dict[str, Any], task_cfg: TaskSection | None = None,
                max_len: int = 200, device: str | torch.device | None = None,
                table_device: str | torch.device | None = None) -> nn.Module:
    """A SeqRecModel for the dataset described by `dataset_manifest` (prepared-dataset manifest, or
    a checkpoint manifest's "dataset" section, which carries the same vocab_sizes and features).

    Heads are added for the active tasks in `task_cfg` whose objective builds one (rating, ctr). Content
    buffers are zeros until `model.embedding.set_item_features(items_table)` or a checkpoint load.

    `table_device="meta"` leaves only the TorchRec tables unallocated (the distributed path: DMP
    materialises each rank's shards, the strategy initialises them); dense layers keep the init
    their constructors give them, which a full meta build would lose.
    """
    spec = FeatureSpec.from_manifest(dataset_manifest)
    dev = torch.device(device) if device is not None else None
    emb_cfg, enc_cfg = model_cfg.embedding, model_cfg.encoder
    feats = spec.item_features(emb_cfg.item_features)
    with torch.device(dev) if dev is not None else contextlib.nullcontext():
        embedding = UniversalEmbedding(spec, emb_cfg.dim, feats, item_id=emb_cfg.item_id, user_id=model_cfg.user_table,
                                       device=dev, init_std=emb_cfg.init_std,
                                       table_device=torch.device(table_device) if table_device is not None else None)
        encoder = build_encoder(enc_cfg, emb_cfg.dim, max_len)
        heads = {}
        if task_cfg is not None:
            for name, objective in task_cfg.objectives().items():
                head = objective.build_head(task_cfg.config(name), emb_cfg.dim)
                if head is not None:
                    heads[name] = head
        model = SeqRecModel(embedding, encoder, max_len, model_cfg.normalize, heads)
    return model


def build_from_config(cfg: TrainConfig, dataset_manifest: dict[str, Any], device=None, table_device=None) -> nn.Module:
    return build_model(cfg.model, dataset_manifest, cfg.task, cfg.data.max_len, device=device, table_device=table_device)


def dataset_section(path: str | os.PathLike, manifest: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint manifest's "dataset" entry; carries the feature spec so the model can be
    rebuilt without the dataset."""
    return {
        "path": str(path),
        "name": manifest.get("name"),
        "vocab_hash": manifest.get("vocab_hash"),
        "vocab_sizes": manifest.get("vocab_sizes"),
        "features": manifest.get("features") or [],
    }


def load_retriever(checkpoint_dir: str | os.PathLike, dataset: str | os.PathLike | dict | None = None):
    """Rebuild the model a checkpoint was trained with and load its weights (CPU, eval mode).

    checkpoint_dir: anything `checkpoint.dcp.resolve_checkpoint` accepts (a step folder, a
    pointer such as runs/x/checkpoints/best, a run's checkpoints folder). dataset: a prepared
    dataset dir or its manifest dict; when given, a checkpoint trained on a different vocabulary
    is refused (CheckpointError). Returns (model, checkpoint manifest with "path": the step folder).
    """
    # DCP loading (torch.distributed.checkpoint) is imported only by the callers that load weights
    from unirec_dist.checkpoint.dcp import check_vocab, load_checkpoint, read_manifest, resolve_checkpoint

    path = resolve_checkpoint(checkpoint_dir)
    manifest = read_manifest(path)
    if dataset is not None:
        if isinstance(dataset, dict):
            ds_manifest, where = dataset, "dataset"
        else:
            ds_manifest, where = PreparedDataset.open(dataset).manifest, str(dataset)
        check_vocab(manifest, str(ds_manifest.get("vocab_hash")), where)
    if "config" not in manifest or "dataset" not in manifest:
        raise CheckpointError(f"{path}: manifest has no config/dataset; not a training checkpoint")
    cfg = from_dict(TrainConfig, manifest["config"], where=f"{path}/manifest.json config")
    model = build_from_config(cfg, manifest["dataset"])
    state = {MODEL_KEY: model.state_dict()}
    manifest = load_checkpoint(path, state)
    model.load_state_dict(state[MODEL_KEY])
    model.eval()
    return model, manifest
