"""Checkpoints: torch.distributed.checkpoint (DCP) files + `manifest.json`, one layout for every writer.

Every writer (single-process `train`/`finetune`, the Lightning TorchRec strategy on N processes,
Ray `pretrain` workers) writes the same thing, and every reader (evaluate, recommend, export,
finetune --from, resume) goes through `load_checkpoint` (weights) or `read_manifest` (the
manifest alone), both of which accept a step folder, a pointer, a run's `checkpoints/` folder or
the run folder itself (`resolve_checkpoint`). DCP reshards on load: a checkpoint written by 2
workers loads into 1 process and the other way round.

Layout of a run's checkpoints::

    <out_dir>/checkpoints/
        step-00000012/       one complete checkpoint (below), named by its global step
        step-00000018/
        last -> step-00000018   pointers: relative symlinks, each replaced by ONE atomic rename
        best -> step-00000012   (`last` newest, `best` by the monitored metric, `final` end of a
        final -> step-00000018  pretraining run)

    step-<N>/
        manifest.json        layout_version, kind, created_at, config (resolved), dataset {path,
                             name, vocab_hash, vocab_sizes, features}, world_size, plan, step,
                             epoch, versions, trainer (the loop/data position/callback state as
                             JSON), files {name: {size, sha256}} of every file below
        .metadata, *.distcp  DCP: "model" (the model's own state dict, sharded or plain),
                             "optim" (dense optimizer tensors, fused table optimizer state),
                             "trainer" (tensor leaves of the loop state), "rng" (per rank)

Publishing (crash-safe at every point; `unirec_dist.utils.faults` names the points tests kill at):
every rank writes its DCP files into `.step-<N>.tmp` (marked by a file of ours, so a later run
removes such leftovers and only those); rank 0 hashes every file into the manifest, renames the
folder to `step-<N>` (a complete checkpoint appears at once or not at all), then replaces each
pointer by renaming a fresh symlink over it, then prunes: all but the newest `keep_last` step
folders and the pointer targets are first renamed away, then deleted. A crash before the folder
rename leaves the previous checkpoints and pointers as they were; after it, the new folder is
complete and found by `resolve_checkpoint(<checkpoints folder>)` (the newest complete step folder).

Reading never runs code from the checkpoint: DCP's `.metadata` is a pickle, read here through an
unpickler that admits only the classes DCP metadata is made of; the state holds tensors only (the
loop state is JSON in the manifest), and a `.distcp` entry stored as pickled bytes is refused.
Before loading, every file's size and sha256 are checked against the manifest; any mismatch is a
one-line `CheckpointError` naming the file.

Under Ray Train (`per_rank_dirs=True`) each rank writes only its own files into its own folder,
hashes them, and rank 0 gathers the hashes into the one manifest; Ray merges the ranks' folders.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib.metadata
import io
import json
import logging
import math
import os
import pathlib
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
import torch.distributed.checkpoint.metadata as md
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, Metadata, MetadataIndex, StorageMeta
from torch.distributed.checkpoint.planner import SavePlan, TensorWriteData, WriteItem, WriteItemType

from unirec_dist.errors import CheckpointError
from unirec_dist.utils.faults import fault_point
from unirec_dist.utils.jsonfile import load_json_object

log = logging.getLogger(__name__)

#: version of the layout described above; 1 was the layout before step folders, hashes and JSON loop state
LAYOUT_VERSION = 2
MANIFEST = "manifest.json"
METADATA = ".metadata"
STEP_PREFIX = "step-"
POINTERS = ("last", "best", "final")
#: the largest piece of one tensor DCP writes as one stored chunk (bytes); see ChunkedSavePlanner
MAX_CHUNK_BYTES = 256 * 2**20
#: a file inside every temp folder this module creates: only folders carrying it are ever removed
TMP_MARKER = ".unirec-checkpoint-tmp"
_OLD_LAYOUT = "it was written by an older unirec checkpoint layout; re-train it (and re-export its bundle)"


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("unirec-dist", "torch", "torchrec", "fbgemm-gpu-cpu", "fbgemm-gpu", "lightning", "ray", "pyarrow"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{int(step):08d}"


# -- reading DCP without running code from it --------------------------------------------------
def _metadata_classes() -> dict[tuple[str, str], Any]:
    from unirec_dist.compat.torch_api import dcp_metadata_globals

    allowed: dict[tuple[str, str], Any] = {
        (md.__name__, n): getattr(md, n)
        for n in ("Metadata", "MetadataIndex", "TensorStorageMetadata", "BytesStorageMetadata",
                  "ChunkStorageMetadata", "TensorProperties", "StorageMeta")
    }
    allowed.update(dcp_metadata_globals())   # the private ones, kept in unirec_dist.compat
    allowed[("torch", "Size")] = torch.Size
    # StorageMeta.checkpoint_id: the path the checkpoint was saved to
    allowed[("pathlib", "PosixPath")] = pathlib.PosixPath
    allowed[("pathlib", "Path")] = pathlib.Path
    return allowed


class _MetadataUnpickler(pickle.Unpickler):
    """Admits only DCP metadata's own classes, torch.Size and dtypes: a pickle naming anything
    else (os.system, builtins.eval, ...) is refused before any of it is called."""

    allowed: dict[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


class SafeFileSystemReader(FileSystemReader):
    """DCP's filesystem reader with `.metadata` read through the allow-listed unpickler.

    `read_metadata` is the public StorageReader hook DCP calls for the metadata; the tensor
    files are already read with `torch.load(weights_only=True)` by the parent class.
    """

    def read_metadata(self, *args: Any, **kwargs: Any):
        path = Path(self._get_metadata_path(kwargs.get("rank")))
        if not _MetadataUnpickler.allowed:
            _MetadataUnpickler.allowed = _metadata_classes()
        try:
            with open(path, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read DCP metadata ({e.strerror or e})") from None
        except Exception as e:  # noqa: BLE001 - any unpickling failure is the file's problem
            raise CheckpointError(f"{path}: not valid DCP metadata ({e})") from None
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{path}: not valid DCP metadata (holds a {type(metadata).__name__})")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class ChunkedSavePlanner(DefaultSavePlanner):
    """DCP's default save plan with every tensor (or local shard) larger than `max_bytes` written
    as row blocks of at most `max_bytes`, each its own stored chunk.

    Why: DCP's writer copies any tensor whose storage is larger than the tensor itself before it
    writes it, and a TorchRec shard is a view into the fused buffer of every table of its group:
    saving a row-wise 15M x 64 shard cost a second 3.6 GiB on the worker for the length of the
    write. Its reader likewise reads one stored chunk into memory whole before copying the part it
    needs. Row blocks bound both extra copies to `max_bytes`. The stored chunks are ordinary DCP
    chunks (the metadata lists them), so any plan loads them: DCP reshards by chunk overlap.
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        super().__init__()
        self.max_bytes = MAX_CHUNK_BYTES if max_bytes is None else max_bytes
        self._blocks: dict[MetadataIndex, tuple[MetadataIndex, int, int]] = {}

    def create_local_plan(self) -> SavePlan:
        plan = super().create_local_plan()
        items: list[WriteItem] = []
        for item in plan.items:
            items.extend(self._split(item))
        self.plan = plan = dataclasses.replace(plan, items=items)
        return plan

    def _split(self, item: WriteItem) -> list[WriteItem]:
        data = item.tensor_data
        if item.type == WriteItemType.BYTE_IO or data is None or len(data.chunk.sizes) == 0:
            return [item]
        sizes, offsets = data.chunk.sizes, data.chunk.offsets
        row_bytes = math.prod(sizes[1:]) * data.properties.dtype.itemsize
        rows = max(1, self.max_bytes // max(row_bytes, 1))
        if sizes[0] <= rows:
            return [item]
        out = []
        for r0 in range(0, sizes[0], rows):
            n = min(rows, sizes[0] - r0)
            at = torch.Size([offsets[0] + r0, *offsets[1:]])
            index = MetadataIndex(item.index.fqn, at)
            self._blocks[index] = (item.index, r0, n)
            chunk = ChunkStorageMetadata(offsets=at, sizes=torch.Size([n, *sizes[1:]]))
            # a plain tensor written in blocks is stored as shards of itself (DCP metadata allows
            # several chunks only for SHARD items)
            out.append(WriteItem(index=index, type=WriteItemType.SHARD,
                                 tensor_data=TensorWriteData(chunk=chunk, properties=data.properties, size=data.size)))
        return out

    def lookup_object(self, index: MetadataIndex) -> Any:
        block = self._blocks.get(index)
        if block is None:
            return super().lookup_object(index)
        whole, r0, n = block
        return super().lookup_object(whole).narrow(0, r0, n)


class SafeLoadPlanner(DefaultLoadPlanner):
    """Refuses entries stored as pickled bytes (DCP would `torch.load(weights_only=False)` them):
    this layout stores tensors only, so such an entry can only come from a tampered checkpoint."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        raise CheckpointError(f"checkpoint entry {read_item.dest_index.fqn!r} is stored as pickled bytes; "
                              "unirec checkpoints hold tensors only, refusing to unpickle it")


def _check_tensors_only(state: Any, prefix: str = "") -> None:
    """Every leaf DCP would write must be a tensor: anything else would be pickled into a .distcp."""
    from torch.distributed.checkpoint.stateful import Stateful

    if isinstance(state, Stateful):
        state = state.state_dict()
    if isinstance(state, dict):
        for k, v in state.items():
            _check_tensors_only(v, f"{prefix}{k}.")
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            _check_tensors_only(v, f"{prefix}{i}.")
    elif not isinstance(state, torch.Tensor):
        raise TypeError(f"checkpoint state {prefix.rstrip('.')} is a {type(state).__name__}; only tensors go "
                        "into DCP files (put plain values into the JSON trainer state)")


# -- files and hashes ---------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def file_digests(folder: Path, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """{file name: {size, sha256}} for `names` (default: every file of `folder` except ours)."""
    if names is None:
        names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in (MANIFEST, TMP_MARKER))
    return {n: {"size": (folder / n).stat().st_size, "sha256": _sha256(folder / n)} for n in names}


def verify_checkpoint(path: Path, manifest: dict[str, Any], names: list[str] | None = None) -> None:
    """Every file the manifest lists exists with its recorded size and sha256 (CheckpointError if not)."""
    files = manifest.get("files")
    if not isinstance(files, dict) or METADATA not in files:
        raise CheckpointError(f"{path / MANIFEST}: lists no checkpoint files; {_OLD_LAYOUT}")
    for name in names if names is not None else sorted(files):
        want = files[name]
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: checkpoint file is missing")
        size = f.stat().st_size
        if size != want.get("size"):
            raise CheckpointError(f"{f}: {size} bytes, the manifest recorded {want.get('size')} "
                                  "(truncated or replaced); the checkpoint is damaged")
        if _sha256(f) != want.get("sha256"):
            raise CheckpointError(f"{f}: sha256 does not match the manifest; the checkpoint is damaged")


def _verify_collective(path: Path, manifest: dict[str, Any]) -> None:
    """Verify on every rank together: each rank hashes a share of the files, all see the first error."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        verify_checkpoint(path, manifest)
        return
    rank, world = dist.get_rank(), dist.get_world_size()
    names = sorted((manifest.get("files") or {}))
    err: str | None = None
    try:
        verify_checkpoint(path, manifest, names[rank::world] if names else None)
    except CheckpointError as e:
        err = str(e)
    errs: list[Any] = [None] * world
    dist.all_gather_object(errs, err)
    first = next((e for e in errs if e), None)
    if first:
        raise CheckpointError(first)


# -- saving -------------------------------------------------------------------------------------
def _make_tmp(tmp: Path) -> None:
    if tmp.exists():
        _remove_ours(tmp)
    tmp.mkdir(parents=True)
    (tmp / TMP_MARKER).touch()


def _remove_ours(p: Path) -> None:
    """Remove a temp folder only if this module created it (it carries the marker file)."""
    if (p / TMP_MARKER).is_file():
        shutil.rmtree(p, ignore_errors=True)


def _full_manifest(manifest: dict[str, Any], world_size: int, files: dict[str, Any]) -> dict[str, Any]:
    return {
        "layout_version": LAYOUT_VERSION,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "world_size": world_size,
        "versions": versions(),
        **manifest,
        "files": files,
    }


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    with open(folder / MANIFEST, "w") as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        f.flush()
        os.fsync(f.fileno())


def _publish(tmp: Path, path: Path) -> None:
    """Rename the complete `tmp` folder to `path` (replacing a previous `path` of the same name)."""
    (tmp / TMP_MARKER).unlink()
    if path.exists() and not path.is_symlink():
        trash = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, trash)
        os.replace(tmp, path)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, path)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], manifest: dict[str, Any],
                    per_rank_dirs: bool = False) -> Path:
    """Save `state` (tensors, ShardedTensors, DTensors or Stateful objects returning them) with DCP
    into the folder `path`, with a manifest listing every file's size and sha256.

    Collective when a process group is initialised: every rank must call it. `manifest` is
    completed with layout_version, created_at, world_size, versions and files.

    `per_rank_dirs=True`: `path` is local to each rank (no shared filesystem, as under Ray Train):
    every rank writes only its own shard files into its own `path` (rank 0 adds `.metadata` and
    the manifest, which lists every rank's files); merging the ranks' folders gives the checkpoint.
    """
    path = Path(path)
    _check_tensors_only(state)
    dist = _dist()
    rank = dist.get_rank() if dist else 0
    world = dist.get_world_size() if dist else 1
    if per_rank_dirs and dist:
        tmp = path.parent / f".{path.name}.tmp-{rank}"
        _make_tmp(tmp)
        dcp.save(state, checkpoint_id=str(tmp), planner=ChunkedSavePlanner())
        fault_point("checkpoint.files_written")
        mine = file_digests(tmp)
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, mine)
        if rank == 0:
            files = {k: v for d in gathered for k, v in d.items()}
            _write_manifest(tmp, _full_manifest(manifest, world, files))
        _publish(tmp, path)
        dist.barrier()
        return path
    # same temp name on every rank (no broadcast needed): the path is on a filesystem all ranks share
    tmp = path.parent / f".{path.name}.tmp"
    if rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        _make_tmp(tmp)
    if dist:
        dist.barrier()
    dcp.save(state, checkpoint_id=str(tmp), no_dist=dist is None, planner=ChunkedSavePlanner())
    fault_point("checkpoint.files_written")
    if rank == 0:
        _write_manifest(tmp, _full_manifest(manifest, world, file_digests(tmp)))
        fault_point("checkpoint.manifest_written")
        _publish(tmp, path)
        fault_point("checkpoint.renamed")
    if dist:
        dist.barrier()
    return path


def publish_pointer(root: Path, name: str, target: str) -> None:
    """Point `root/name` at the sibling folder `target` with one atomic rename of a new symlink."""
    if name not in POINTERS:
        raise ValueError(f"unknown checkpoint pointer {name!r}")
    tmp = root / f".{name}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, root / name)


def publish_step(root: str | os.PathLike, path: Path, pointers: tuple[str, ...], keep_last: int) -> None:
    """After `path` (a step folder of `root`) is complete: point `pointers` at it, then keep the
    newest `keep_last` step folders (and every pointer's target). Rank 0 only."""
    root = Path(root)
    for p in pointers:
        publish_pointer(root, p, path.name)
    fault_point("checkpoint.pointer_written")
    prune_checkpoints(root, keep_last)


def remove_stale_temps(root: Path) -> list[Path]:
    """Remove temp folders a crashed save left in `root` (only folders carrying our marker)."""
    removed = []
    for p in root.iterdir() if root.is_dir() else []:
        if p.name.startswith(".") and p.is_dir() and not p.is_symlink() and (p / TMP_MARKER).is_file():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def checkpoint_dirs(root: str | os.PathLike) -> list[Path]:
    """Complete step folders under `root` (their manifest exists: it is written before the
    folder is renamed into place), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.name.startswith(STEP_PREFIX) and not p.is_symlink() and (p / MANIFEST).is_file():
            try:
                found.append((int(p.name[len(STEP_PREFIX):]), p))
            except ValueError:
                continue
    return [p for _, p in sorted(found)]


def prune_checkpoints(root: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete step folders, never a pointer's target.

    Each victim is first renamed to a hidden marked temp name (atomic), then deleted, so a crash
    mid-delete never leaves a half-deleted folder that looks like a checkpoint; returns removed.
    """
    root = Path(root)
    dirs = checkpoint_dirs(root)
    pinned = {os.readlink(root / p) for p in POINTERS if (root / p).is_symlink()}
    victims = [p for p in (dirs[:-keep_last] if keep_last > 0 else []) if p.name not in pinned]
    for p in victims:
        trash = root / f".{p.name}.trash"
        os.replace(p, trash)
        (trash / TMP_MARKER).touch()
        fault_point("checkpoint.pruning")
        shutil.rmtree(trash, ignore_errors=True)
    return victims


# -- finding and reading -------------------------------------------------------------------------
def _follow_pointer(p: Path) -> Path:
    target = os.readlink(p)
    if "/" in target or not target.startswith(STEP_PREFIX):
        raise CheckpointError(f"{p}: checkpoint pointer names {target!r}, not a step folder beside it")
    real = p.parent / target
    if not (real / MANIFEST).is_file():
        raise CheckpointError(f"{p}: points to {target}, which is missing or incomplete")
    return real


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The step folder `path` names: a step folder itself, a pointer (`checkpoints/last`), a run's
    `checkpoints/` folder or the run folder (both: the newest complete step folder in it)."""
    p = Path(path)
    if p.is_symlink() and p.name in POINTERS:
        return _follow_pointer(p)
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {p} does not exist or is not a directory")
    if (p / MANIFEST).is_file():
        return p
    for root in (p, p / "checkpoints"):
        dirs = checkpoint_dirs(root)
        if dirs:
            return dirs[-1]
    raise CheckpointError(f"checkpoint {p} has no {MANIFEST} and no complete step-* folder; it is not a unirec "
                          "checkpoint or its save did not finish")


def _check_layout(manifest: dict[str, Any], mf: Path) -> None:
    got = manifest.get("layout_version")
    if got == LAYOUT_VERSION:
        return
    if got is None:
        raise CheckpointError(f"{mf}: {_OLD_LAYOUT}")
    raise CheckpointError(f"{mf}: layout_version {got!r} is not supported (this version reads {LAYOUT_VERSION})")


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the checkpoint `path` names (see `resolve_checkpoint`); no file is hashed."""
    folder = resolve_checkpoint(path)
    mf = folder / MANIFEST
    manifest = load_json_object(mf, CheckpointError)
    _check_layout(manifest, mf)
    return manifest


def load_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> dict[str, Any]:
    """Load the checkpoint `path` names into `state` in place (resharding as needed); return its
    manifest (with "path": the step folder read). The one way every reader loads weights.

    Checks the layout version and every file's size and sha256 first; reads DCP's metadata
    through an allow-list and refuses pickled entries. Works in a plain process (no process
    group) and in any world size (collective then: every rank must call it).
    """
    from torch.distributed.checkpoint.api import CheckpointException

    folder = resolve_checkpoint(path)
    manifest = read_manifest(folder)
    _verify_collective(folder, manifest)
    reader = SafeFileSystemReader(folder)
    # read (and refuse) the metadata here: inside dcp.load a failed read is retried with per-rank
    # metadata files and logged with a traceback before it surfaces
    reader.read_metadata()
    try:
        dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner(),
                 no_dist=_dist() is None)
    except CheckpointException as e:
        raise _unwrap(e, folder) from None
    except CheckpointError:
        raise
    except Exception as e:  # DCP raises plain exceptions for missing keys / shape mismatches
        raise CheckpointError(f"{folder}: cannot load: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
                              ) from None
    return {**manifest, "path": str(folder)}


def _unwrap(e: Any, folder: Path) -> CheckpointError:
    """DCP wraps each rank's exception; ours pass through, others become one line."""
    for failure in (getattr(e, "failures", None) or {}).values():
        exc = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(exc, CheckpointError):
            return exc
    first = next(iter((getattr(e, "failures", None) or {}).values()), None)
    exc = first[0] if isinstance(first, tuple) else first
    msg = str(exc).splitlines()[0][:200] if exc is not None and str(exc) else type(exc).__name__
    return CheckpointError(f"{folder}: cannot load: {msg}")


def check_vocab(manifest: dict[str, Any], vocab_hash: str, where: str) -> None:
    """Refuse a checkpoint whose vocab differs from the dataset's."""
    got = (manifest.get("dataset") or {}).get("vocab_hash")
    if got != vocab_hash:
        raise CheckpointError(
            f"{where}: checkpoint vocab_hash {str(got)[:12]} does not match the dataset's {vocab_hash[:12]}; "
            "it was trained on another dataset (use `unirec finetune` to align vocabularies)"
        )
