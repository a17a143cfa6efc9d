"""Checkpoints = torch.distributed.checkpoint (DCP) files + `manifest.json`, saved atomically.

One format for every writer (1 process, N Lightning/Ray workers) and every reader (1 process,
a world-size-1 DMP, N workers with another plan): DCP reshards on load, so a checkpoint written
by 2 workers loads into 1 process and the other way round.

Layout of a checkpoint directory::

    manifest.json       format_version, kind, created_at, config (resolved), dataset
                        {path, name, vocab_hash, vocab_sizes}, world_size, plan, step, epoch,
                        versions; written by rank 0 after all DCP files are complete
    .metadata, *.distcp DCP files (model, optimizer incl. fused table state, loop state)

Saving: every rank calls `save_checkpoint` with its (sharded) state; rank 0 publishes the
directory with a rename only after every rank's files are written, so a crash mid-save leaves
the previous checkpoint intact and no half checkpoint at `path`.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

from unirec_dist.errors import CheckpointError
from unirec_dist.utils.jsonfile import load_json_object
from unirec_dist.utils.atomic import publish_dir

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("unirec-dist", "torch", "torchrec", "fbgemm-gpu-cpu", "fbgemm-gpu", "lightning", "ray", "pyarrow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def save_checkpoint(
    path: str | os.PathLike, state: dict[str, Any], manifest: dict[str, Any], per_rank_dirs: bool = False
) -> Path:
    """Save `state` (tensors, ShardedTensors, DTensors or Stateful objects) with DCP.

    Collective when a process group is initialised: every rank must call it.
    `manifest` is completed with format_version, created_at, world_size and versions.

    `per_rank_dirs=True`: `path` is local to each rank (no shared filesystem, as under Ray Train):
    every rank writes only its own shard files into its own `path` (rank 0 adds `.metadata` and
    the manifest); merging the ranks' dirs gives the complete checkpoint (Ray's report does it).
    """
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    dist = _dist()
    rank = dist.get_rank() if dist else 0
    if per_rank_dirs and dist:
        return _save_per_rank(path, state, manifest, dist, rank)
    # Same temp name on every rank (no broadcast needed); the path must be on a filesystem all
    # ranks share, or Ray Train's per-worker storage (see launch/) must merge it.
    tmp = path.parent / f".{path.name}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    if dist:
        dist.barrier()
    dcp.save(state, checkpoint_id=str(tmp), no_dist=dist is None)
    if rank == 0:
        full = _full_manifest(manifest, dist)
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True, default=str))
        publish_dir(tmp, path)
    if dist:
        dist.barrier()
    return path


def _full_manifest(manifest: dict[str, Any], dist: Any) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "world_size": dist.get_world_size() if dist else 1,
        "versions": versions(),
        **manifest,
    }


def _save_per_rank(path: Path, state: dict[str, Any], manifest: dict[str, Any], dist: Any, rank: int) -> Path:
    import torch.distributed.checkpoint as dcp

    tmp = path.parent / f".{path.name}.tmp-{rank}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dcp.save(state, checkpoint_id=str(tmp))
    if rank == 0:
        (tmp / MANIFEST).write_text(json.dumps(_full_manifest(manifest, dist), indent=2, sort_keys=True, default=str))
    publish_dir(tmp, path)
    dist.barrier()
    return path


def checkpoint_dirs(root: str | os.PathLike, prefix: str = "step-") -> list[Path]:
    """Complete checkpoints under `root` named `<prefix><number>`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(prefix) and (p / MANIFEST).is_file():
            try:
                found.append((int(p.name[len(prefix):]), p))
            except ValueError:
                continue
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | os.PathLike, prefix: str = "step-") -> Path | None:
    dirs = checkpoint_dirs(root, prefix)
    return dirs[-1] if dirs else None


def prune_checkpoints(root: str | os.PathLike, keep_last: int, prefix: str = "step-") -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints (and stale temp dirs); returns removed."""
    dirs = checkpoint_dirs(root, prefix)
    removed = dirs[:-keep_last] if keep_last > 0 else []
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a directory")
    mf = path / MANIFEST
    if not mf.is_file():
        raise CheckpointError(f"checkpoint {path} has no {MANIFEST}; it is not a unirec checkpoint or its save did not finish")
    manifest = load_json_object(mf, CheckpointError)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{mf}: format_version {manifest.get('format_version')!r} is not supported (expected {FORMAT_VERSION})"
        )
    return manifest


def load_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> dict[str, Any]:
    """Load DCP files at `path` into `state` in place (resharding as needed); return the manifest.

    Works in a plain process (no process group) and in any world size.
    """
    import torch.distributed.checkpoint as dcp

    manifest = read_manifest(path)
    dcp.load(state, checkpoint_id=str(path), no_dist=_dist() is None)
    return manifest


def check_vocab(manifest: dict[str, Any], vocab_hash: str, where: str) -> None:
    """Refuse a checkpoint whose vocab differs from the dataset's."""
    got = (manifest.get("dataset") or {}).get("vocab_hash")
    if got != vocab_hash:
        raise CheckpointError(
            f"{where}: checkpoint vocab_hash {str(got)[:12]} does not match the dataset's {vocab_hash[:12]}; "
            "it was trained on another dataset (use `unirec finetune` to align vocabularies)"
        )
