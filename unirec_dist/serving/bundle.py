"""The serving bundle: everything `Recommender` needs, in files that load without torch.distributed,
TorchRec sharding or pickle (safetensors for tensors, Parquet for tables, JSON for the rest).

Layout of a bundle directory (written atomically by `write_bundle`, e.g. via `unirec export`)::

    manifest.json           format_version, kind "unirec-bundle", created_at,
                            model {builder, config, class, max_len, dim},
                            dataset {name, path, vocab_hash, vocab_sizes, features (what
                            the model is rebuilt from), manifest (the prepared dataset's)},
                            checkpoint {path, manifest (the checkpoint's own)} or null,
                            counts {items, users, histories},
                            files {name: sha256}, ann (present when an index was prebuilt)
    config.json             the resolved config the model was built from (model section inside)
    weights.safetensors     the consolidated model state_dict as plain tensors (may be absent
                            when the builder needs no weights, e.g. the synthetic model)
    items.safetensors       "items": (N + 1, D) float32 precomputed item vectors, row 0 = padding
    vocab/item.parquet      raw: string, index: int32 (1..N)
    vocab/user.parquet      raw: string, index: int32 (1..n_users)
    histories.parquet       user: int32, items: list<int32>: each known user's full known
                            sequence (time-ordered, oldest first)
    display.parquet         optional: item int32 (1..N) + one string column per display field
                            (title, genres, ...; see serving/display.py), listed in
                            manifest["display"] = {file, fields}; absent (null) when the
                            dataset has none
    ann/hnsw.faiss          optional prebuilt faiss HNSW index over rows 1..N (faiss's own
                            binary format, no pickle), with its parameters in manifest["ann"]

`builder` names a function in `MODEL_BUILDERS` (no import paths in files): "unirec" rebuilds the
model with `unirec_dist.training.build.build_from_config(config, manifest["dataset"])` and loads
the weights; "synthetic-meanpool" is the weight-free mean-pool model used by tests and benchmarks.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unirec_dist.errors import CheckpointError
from unirec_dist.utils.jsonfile import load_json_object
from unirec_dist.utils.atomic import MARKER, atomic_dir

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KIND = "unirec-bundle"
MANIFEST = "manifest.json"
CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
ITEMS = "items.safetensors"
ITEM_VOCAB = "vocab/item.parquet"
USER_VOCAB = "vocab/user.parquet"
HISTORIES = "histories.parquet"
HNSW_FILE = "ann/hnsw.faiss"
DISPLAY = "display.parquet"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def vocab_table(raw: list[str] | pa.Array) -> pa.Table:
    """A vocab table (raw: string, index: int32 1..n) from raw ids in index order."""
    raw = pa.array(raw, type=pa.string()) if not isinstance(raw, pa.Array) else raw.cast(pa.string())
    return pa.table({"raw": raw, "index": pa.array(np.arange(1, len(raw) + 1, dtype=np.int32))})


def write_bundle(
    out: str | os.PathLike,
    *,
    item_matrix: "torch.Tensor",
    item_vocab: pa.Table,
    user_vocab: pa.Table,
    histories: pa.Table,
    builder: str,
    config: dict[str, Any],
    model_info: dict[str, Any],
    dataset: dict[str, Any],
    checkpoint: dict[str, Any] | None = None,
    weights: dict[str, "torch.Tensor"] | None = None,
    overwrite: bool = False,
    hnsw: dict[str, Any] | None = None,
    display: pa.Table | None = None,
) -> Path:
    """Write a bundle directory atomically (temp dir + rename); see the module docstring.

    item_matrix: (N + 1, D) float32, row 0 = padding; item_vocab/user_vocab: raw, index tables;
    histories: user int32, items list<int32>; weights: a plain state_dict (or None);
    hnsw: {"M", "ef_construction", "ef_search"} to prebuild and store an HNSW index;
    display: item int32 + string columns (serving.display.display_table), or None.
    """
    import torch
    from safetensors.torch import save_file

    if builder not in MODEL_BUILDERS:
        raise ValueError(f"unknown model builder {builder!r}")
    item_matrix = item_matrix.detach().to("cpu", torch.float32).contiguous()
    n_items = item_matrix.shape[0] - 1
    if item_vocab.num_rows != n_items:
        raise CheckpointError(f"item vocab has {item_vocab.num_rows} rows but the item matrix has {n_items} items")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "vocab").mkdir()
        save_file({"items": item_matrix}, str(tmp / ITEMS))
        if weights is not None:
            # safetensors refuses shared storage and non-contiguous views: give it plain copies.
            plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
            save_file(plain, str(tmp / WEIGHTS))
        pq.write_table(item_vocab.select(["raw", "index"]).cast(
            pa.schema([("raw", pa.string()), ("index", pa.int32())])), tmp / ITEM_VOCAB)
        pq.write_table(user_vocab.select(["raw", "index"]).cast(
            pa.schema([("raw", pa.string()), ("index", pa.int32())])), tmp / USER_VOCAB)
        pq.write_table(histories.select(["user", "items"]).cast(
            pa.schema([("user", pa.int32()), ("items", pa.list_(pa.int32()))])), tmp / HISTORIES)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        display_entry = None
        if display is not None:
            fields = [n for n in display.column_names if n != "item"]
            pq.write_table(display.select(["item", *fields]).cast(
                pa.schema([("item", pa.int32())] + [(f, pa.string()) for f in fields])), tmp / DISPLAY)
            display_entry = {"file": DISPLAY, "fields": fields}
        ann = None
        if hnsw is not None:
            from unirec_dist.serving.index import HNSWIndex

            idx = HNSWIndex.build(item_matrix, **hnsw)
            (tmp / "ann").mkdir()
            idx.save(tmp / HNSW_FILE)
            ann = {"kind": "hnsw", "file": HNSW_FILE, **idx.params()}
        files = {
            str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*"))
            if p.is_file() and p.name != MARKER      # the temp dir's marker goes at publish
        }
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {"builder": builder, "dim": int(item_matrix.shape[1]), **model_info},
            "dataset": dataset,
            "checkpoint": checkpoint,
            "counts": {"items": n_items, "users": user_vocab.num_rows, "histories": histories.num_rows},
            "files": files,
            "ann": ann,
            "display": display_entry,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    log.info("wrote bundle %s (%d items, dim %d)", out, n_items, item_matrix.shape[1])
    return Path(out)


def read_bundle_manifest(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"bundle {path} does not exist or is not a directory")
    mf = path / MANIFEST
    if not mf.is_file():
        raise CheckpointError(f"bundle {path} has no {MANIFEST}; it is not a unirec bundle (make one with `unirec export`)")
    manifest = load_json_object(mf, CheckpointError)
    if manifest.get("kind") != KIND or manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{mf}: kind {manifest.get('kind')!r} / format_version {manifest.get('format_version')!r} "
            f"is not a supported bundle (expected {KIND!r} version {FORMAT_VERSION})"
        )
    for name in (ITEMS, ITEM_VOCAB, USER_VOCAB, HISTORIES, CONFIG):
        if not (path / name).is_file():
            raise CheckpointError(f"bundle {path} is incomplete: {name} is missing")
    return manifest


def verify_bundle(path: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Check every file against the sha256 in the manifest, before anything is loaded (a file
    damaged or swapped after export is one line, not wrong recommendations)."""
    path = Path(path)
    for name, digest in manifest.get("files", {}).items():
        f = path / name
        if not f.is_file() or _sha256(f) != digest:
            raise CheckpointError(f"bundle {path}: {name} is missing or does not match its sha256")


def load_tensors(path: Path) -> dict[str, "torch.Tensor"]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # a truncated or foreign file: the user's bundle is broken
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__})") from None


# ---- model builders: bundle manifest name -> function(config, manifest, bundle path, item matrix)

def _build_unirec(config: dict[str, Any], manifest: dict[str, Any], path: Path, items: "torch.Tensor"):
    """Rebuild the trained model from the resolved train config + the checkpoint's dataset section
    (vocab sizes and feature spec) and fill it from weights.safetensors (strict: every tensor)."""
    from unirec_dist.config.loader import from_dict
    from unirec_dist.config.train import TrainConfig
    from unirec_dist.training.build import build_from_config

    cfg = from_dict(TrainConfig, config, where=f"{path / CONFIG}")
    dataset = {k: v for k, v in (manifest.get("dataset") or {}).items() if k != "manifest"}
    model = build_from_config(cfg, dataset, device="cpu")
    if not (path / WEIGHTS).is_file():
        raise CheckpointError(f"bundle {path} is incomplete: {WEIGHTS} is missing")
    state = load_tensors(path / WEIGHTS)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"bundle {path}: weights do not fit the model built from its config: {first}") from None
    return model.eval()


def _build_synthetic(config: dict[str, Any], manifest: dict[str, Any], path: Path, items: "torch.Tensor"):
    from unirec_dist.serving.synthetic import MeanPoolRetriever

    return MeanPoolRetriever(items, max_len=int(config.get("max_len", 50)))


MODEL_BUILDERS: dict[str, Callable[..., Any]] = {
    "unirec": _build_unirec,
    "synthetic-meanpool": _build_synthetic,
}
