"""`unirec export`: a training checkpoint -> a self-contained serving bundle.

    export_bundle(checkpoint, out, dataset=None, overwrite=False, hnsw=None, display_fields=None) -> Path

The checkpoint (DCP, any world size) is loaded into one plain process with
`training.build.load_retriever`; the bundle then holds the consolidated weights as plain tensors
(safetensors), the precomputed (N + 1, D) item matrix, the user/item vocabs (Parquet), each known
user's full interaction sequence (Parquet, user -> list<int32>), the resolved config and a
manifest naming the checkpoint (its own manifest), the dataset (vocab_hash, vocab sizes, feature
spec, its manifest) and the creation time. See `unirec_dist.serving.bundle` for the layout. The
bundle loads with `Recommender.from_bundle` without torch.distributed, sharding or pickle.

The dataset is the one the checkpoint names (manifest "dataset.path") unless `dataset` is given;
either way its vocab_hash must match the checkpoint's. Written atomically (temp dir + rename).
Display fields (title, genres, ...; `unirec_dist.serving.display`) are copied from the dataset's
raw item columns: `display_fields` names them, None takes the default ones the dataset has.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from unirec_dist.errors import CheckpointError

log = logging.getLogger(__name__)


def full_histories(dataset: Any) -> pa.Table:
    """Every user's full known sequence (all interactions, time-ordered): user int32, items list<int32>.

    For leave-one-out this is test history + test target; users too short for a test row keep
    their training items. Users without interactions get no row.
    """
    inter = dataset.table("interactions", columns=["user", "item"])
    u = inter["user"].to_numpy().astype(np.int64)
    items = inter["item"].to_numpy().astype(np.int32)
    if len(u) > 1 and (np.diff(u) < 0).any():
        # the format promises (user, timestamp, item) order; a stable sort by user keeps time order
        order = np.argsort(u, kind="stable")
        u, items = u[order], items[order]
    users, starts = np.unique(u, return_index=True)
    offsets = np.concatenate([starts, [len(u)]]).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(items, pa.int32()))
    return pa.table({"user": pa.array(users.astype(np.int32)), "items": lists})


def _plain_state(model: Any) -> dict[str, Any]:
    import torch

    state = {}
    for k, v in model.state_dict().items():
        if type(v) is not torch.Tensor and not isinstance(v, torch.nn.Parameter):
            # a ShardedTensor/DTensor here means the model was not consolidated: a bug upstream
            raise TypeError(f"state_dict entry {k} is a {type(v).__name__}, not a plain tensor")
        if v.is_meta:
            raise TypeError(f"state_dict entry {k} is on the meta device")
        state[k] = v.detach()
    return state


def export_bundle(checkpoint: str | os.PathLike, out: str | os.PathLike, dataset: str | os.PathLike | None = None,
                  overwrite: bool = False, hnsw: dict[str, Any] | None = None,
                  display_fields: list[str] | None = None) -> Path:
    """Write the serving bundle for `checkpoint` to `out` (see the module docstring)."""
    import torch

    from unirec_dist.checkpoint.dcp import check_vocab, read_manifest
    from unirec_dist.data.dataset import PreparedDataset
    from unirec_dist.serving.bundle import write_bundle
    from unirec_dist.serving.display import display_table, resolve_fields
    from unirec_dist.training.build import load_retriever
    from unirec_dist.utils.atomic import check_output_dir

    check_output_dir(out, overwrite)  # fail before the expensive load
    ckpt = Path(checkpoint)
    manifest = read_manifest(ckpt)
    ds_section = manifest.get("dataset") or {}
    ds_path = dataset if dataset is not None else ds_section.get("path")
    if not ds_path:
        raise CheckpointError(f"{ckpt}/manifest.json names no dataset path; pass --dataset")
    ds = PreparedDataset.open(ds_path)
    check_vocab(manifest, ds.vocab_hash, str(ds_path))
    fields = resolve_fields(ds, display_fields)   # a missing field fails before the model load
    model, manifest = load_retriever(ckpt)
    with torch.inference_mode():
        items = model.item_embeddings().detach().float().cpu()
    if items.shape[0] != ds.n_items + 1:
        raise CheckpointError(f"{ckpt}: model scores {items.shape[0] - 1} items, dataset {ds_path} has {ds.n_items}")
    cfg = manifest.get("config") or {}
    encoder = ((cfg.get("model") or {}).get("encoder") or {}).get("kind")
    log.info("exporting %s (%s, %d items, dim %d) to %s", ckpt, encoder, ds.n_items, items.shape[1], out)
    return write_bundle(
        out,
        item_matrix=items,
        item_vocab=ds.vocab("item"),
        user_vocab=ds.vocab("user"),
        histories=full_histories(ds),
        builder="unirec",
        config=cfg,
        model_info={"class": type(model).__name__, "encoder": encoder, "max_len": int(model.max_len),
                    "name": cfg.get("name")},
        dataset={**ds_section, "path": str(ds_path), "vocab_hash": ds.vocab_hash,
                 "vocab_sizes": ds.manifest.get("vocab_sizes"), "name": ds.name, "manifest": ds.manifest},
        checkpoint={"path": str(ckpt.resolve()), "manifest": manifest},
        weights=_plain_state(model),
        overwrite=overwrite,
        hnsw=hnsw,
        display=display_table(ds, fields),
    )
