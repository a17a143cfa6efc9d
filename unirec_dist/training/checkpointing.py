"""Lightning <-> the one checkpoint layout (`unirec_dist.checkpoint.dcp`).

- App state as `Stateful` objects, as torchtitan's checkpoint manager builds it: `ModelState`
  (the model's own state dict, sharded or plain), `OptimizerState` (dense optimizers' tensors and
  the fused table optimizer's state), `RNGState` (this rank's torch RNG). DCP calls their
  `state_dict()` when saving and `load_state_dict()` after loading in place.
- The loop state (Lightning's checkpoint dict minus weights: loops and data position, epoch,
  global step, callback states, optimizer hyper-parameters) is split by `split_tree` into JSON
  (the manifest's "trainer" entry) and its tensor leaves (DCP entry "trainer"): nothing pickled.
- `DCPCheckpointing`: the strategy mixin that saves and loads that state on every rank; used by
  `SingleDeviceDCPStrategy` (train, finetune) and `TorchRecStrategy` (N processes, Ray).
- `CheckpointCallback`: the one checkpoint callback: step folders every N epochs and/or steps,
  `best` by a monitored validation metric, `last`, keep-last-k; or Ray reports under Ray Train.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch.distributed.checkpoint.stateful import Stateful

from unirec_dist.checkpoint.dcp import (
    checkpoint_dirs,
    load_checkpoint,
    publish_step,
    read_manifest,
    remove_stale_temps,
    resolve_checkpoint,
    save_checkpoint,
    step_dir_name,
)
from unirec_dist.compat.lightning_api import train_loader_of
from unirec_dist.compat.torch_api import init_optim_state
from unirec_dist.errors import CheckpointError, UnirecError
from unirec_dist.utils.faults import fault_point

if TYPE_CHECKING:
    import lightning.pytorch as pl

log = logging.getLogger(__name__)


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


# -- JSON + tensors instead of pickle ----------------------------------------------------------
def split_tree(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """`obj` as JSON-able data; its tensors move to `tensors` (key -> tensor) and are replaced by
    {"__tensor__": key, "shape", "dtype"}. Tuples and dicts with non-string keys are tagged so
    `join_tree` rebuilds them exactly. Anything else is a programming error (TypeError)."""
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach()
        return {"__tensor__": key, "shape": list(obj.shape), "dtype": str(obj.dtype).removeprefix("torch.")}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: split_tree(v, tensors) for k, v in obj.items()}
        return {"__items__": [[split_tree(k, tensors), split_tree(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, list):
        return [split_tree(v, tensors) for v in obj]
    if isinstance(obj, tuple):
        return {"__tuple__": [split_tree(v, tensors) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():   # numpy scalars
        return obj.item()
    raise TypeError(f"cannot store a {type(obj).__name__} in the JSON trainer state")


def tensor_templates(tree: Any, out: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Empty tensors for every placeholder of a `split_tree` result (what DCP loads into)."""
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            dtype = getattr(torch, str(tree.get("dtype")), None)
            if not isinstance(dtype, torch.dtype):
                raise CheckpointError(f"{where}: trainer state names an unknown dtype {tree.get('dtype')!r}")
            out[str(tree["__tensor__"])] = torch.empty([int(n) for n in tree.get("shape", [])], dtype=dtype)
            return out
        for v in tree.values():
            tensor_templates(v, out, where)
    elif isinstance(tree, list):
        for v in tree:
            tensor_templates(v, out, where)
    return out


def join_tree(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `split_tree`."""
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__tuple__" in tree:
            return tuple(join_tree(v, tensors) for v in tree["__tuple__"])
        if "__items__" in tree:
            return {join_tree(k, tensors): join_tree(v, tensors) for k, v in tree["__items__"]}
        return {k: join_tree(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join_tree(v, tensors) for v in tree]
    return tree


# -- Stateful app state --------------------------------------------------------------------------
class ModelState(Stateful):
    """The model's own state dict (not the LightningModule's): what `load_retriever` reads."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.model.load_state_dict(state_dict)


class OptimizerState(Stateful):
    """Tensor state of the dense optimizers ("dense_<i>") and of the fused table optimizer
    ("fused"); their param_groups (hyper-parameters) travel in the JSON trainer state."""

    def __init__(self, dense: list[torch.optim.Optimizer], fused: Any = None) -> None:
        self.dense, self.fused = dense, fused
        #: set before loading: the saved param_groups {"dense": [...], "fused": ...}
        self.param_groups: dict[str, Any] = {}

    def groups(self) -> dict[str, Any]:
        return {"dense": [opt.state_dict()["param_groups"] for opt in self.dense],
                # TorchRec's KeyedOptimizer has param_groups only when asked to save them
                "fused": self.fused.state_dict().get("param_groups") if self.fused is not None else None}

    def state_dict(self) -> dict[str, Any]:
        # tensors only: DCP's load traversal treats param_groups (a list of flat dicts) as one leaf
        # while its save traversal flattens it; they go with the JSON state instead
        # an optimizer without state (a model whose only parameters are the sharded tables, before
        # or after any step) is left out: DCP stores nothing for an empty dict, and a load that asks
        # for one would find its key missing
        out: dict[str, Any] = {}
        for i, opt in enumerate(self.dense):
            if state := opt.state_dict()["state"]:
                out[f"dense_{i}"] = {str(k): v for k, v in state.items()}
        if self.fused is not None:
            out["fused"] = self.fused.state_dict()["state"]
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = self.param_groups.get("dense") or []
        for i, opt in enumerate(self.dense):
            groups = opt.state_dict()["param_groups"]
            if i < len(saved) and len(saved[i]) == len(groups):
                # the saved hyper-parameters (lr after schedulers, ...) over the live param ids
                groups = [{**g, **{k: v for k, v in s.items() if k != "params"}} for g, s in zip(groups, saved[i])]
            opt.load_state_dict({"state": {int(k): v for k, v in state_dict.get(f"dense_{i}", {}).items()},
                                 "param_groups": groups})
        if self.fused is not None:
            groups = self.param_groups.get("fused")
            self.fused.load_state_dict({"state": state_dict["fused"], **({"param_groups": groups} if groups else {})})


class RNGState(Stateful):
    """This rank's torch RNG (CPU, and CUDA when used), stored per rank ("rank_<r>")."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def state_dict(self) -> dict[str, Any]:
        mine = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            mine["cuda"] = torch.cuda.get_rng_state()
        return {f"rank_{self.rank}": mine}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        mine = state_dict[f"rank_{self.rank}"]
        torch.set_rng_state(mine["cpu"])
        if "cuda" in mine:
            torch.cuda.set_rng_state(mine["cuda"])


def _init_optimizer_state(opt: torch.optim.Optimizer) -> None:
    """Create an optimizer's lazily built state (Adam's moments) so DCP can load into it."""
    init_optim_state(opt)


# -- the strategy mixin --------------------------------------------------------------------------
class DCPCheckpointing:
    """Lightning strategy mixin: save/load the layout of `unirec_dist.checkpoint.dcp` on every rank.

    The host strategy provides `lightning_module`, `optimizers`, `global_rank`; subclasses
    override `fused_optimizer()` and `plan_manifest()` (the TorchRec strategy does).
    """

    if TYPE_CHECKING:   # provided by the host Lightning strategy
        lightning_module: Any
        optimizers: list[Any]
        is_global_zero: bool
        global_rank: int

    #: extra manifest entries for every checkpoint (kind, config, dataset, ...), set by the job
    manifest_extra: dict[str, Any]
    #: under Ray Train each rank writes its own local folder and Ray merges them
    per_rank_dirs: bool = False
    module_attr: str = "model"

    def fused_optimizer(self) -> Any:
        return None

    def plan_manifest(self) -> dict[str, Any] | None:
        return None

    def _shardable_model(self) -> torch.nn.Module:
        return getattr(self.lightning_module, self.module_attr)

    def _app_state(self, optim: OptimizerState) -> dict[str, Any]:
        dist = _dist()
        return {"model": ModelState(self._shardable_model()), "optim": optim,
                "rng": RNGState(dist.get_rank() if dist else 0)}

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True      # load into the (sharded) model and the real optimizers

    @property
    def lightning_restore_optimizer(self) -> bool:
        return False     # done in load_checkpoint

    def lightning_module_state_dict(self) -> dict[str, Any]:
        return {}        # the real state is written by save_checkpoint with DCP

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return {}

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Every rank writes its shards (collective); rank 0 writes the manifest and publishes."""
        optim = OptimizerState(list(self.optimizers), self.fused_optimizer())
        state = self._app_state(optim)
        rest = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
        rest["optimizer_param_groups"] = optim.groups()
        tensors: dict[str, torch.Tensor] = {}
        trainer_tree = split_tree(rest, tensors)
        state["trainer"] = tensors
        extra = dict(self.manifest_extra)
        lm = self.lightning_module
        manifest = {
            "kind": extra.pop("kind", "train"),
            "step": int(checkpoint.get("global_step", 0)),
            "epoch": int(checkpoint.get("epoch", 0)),
            "plan": self.plan_manifest(),
            "metrics": dict(getattr(lm, "last_metrics", None) or {}),
            **extra,
            "trainer": trainer_tree,
        }
        save_checkpoint(Path(filepath), state, manifest, per_rank_dirs=self.per_rank_dirs)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Load model, optimizer, RNG and loop state in place (resharding as needed); return the
        loop state for Lightning to restore (loops, callbacks)."""
        manifest = read_manifest(checkpoint_path)
        tree = manifest.get("trainer")
        if not isinstance(tree, dict):
            raise CheckpointError(f"{checkpoint_path}: the manifest has no trainer state; it cannot be resumed")
        for opt in self.optimizers:
            _init_optimizer_state(opt)
        optim = OptimizerState(list(self.optimizers), self.fused_optimizer())
        state = self._app_state(optim)
        rank = state["rng"].rank
        if rank >= int(manifest.get("world_size", 1)):
            del state["rng"]      # more ranks than the writer had: the new ranks keep their seeded RNG
        tensors = tensor_templates(tree, {}, str(checkpoint_path))
        if tensors:
            state["trainer"] = tensors
        rest = join_tree(tree, tensors)
        optim.param_groups = rest.pop("optimizer_param_groups", None) or {}
        manifest = load_checkpoint(checkpoint_path, state)
        rest = join_tree(tree, state.get("trainer", {}))
        rest.pop("optimizer_param_groups", None)
        rest.setdefault("state_dict", {})
        rest.setdefault("optimizer_states", [])
        rest.setdefault("lr_schedulers", [])
        rest["unirec_manifest"] = manifest
        carry_optimizer_steps(rest)
        self._position_loader(rest)
        log.info("resumed from %s (step %s)", manifest.get("path"), manifest.get("step"))
        return rest

    def _position_loader(self, rest: dict[str, Any]) -> None:
        """Put the train loader where the checkpoint stopped (a plain iterable would restart its epoch).

        Uses the loader's `set_epoch(epoch)` and `skip(n)` when it has them; `skip` must apply to
        the next iteration that actually yields (Lightning calls iter() more than once up front).
        """
        loader = train_loader_of(self.lightning_module)
        if loader is None:
            return
        epoch, done = loader_position(rest, _batches_per_epoch(loader, self.lightning_module.trainer.limit_train_batches))
        if done:
            reopen_cut_epoch(rest, epoch)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        if done and hasattr(loader, "skip"):
            loader.skip(done)

    def load_model_state_dict(self, checkpoint: Any, strict: bool = True) -> None:
        pass  # loaded in load_checkpoint

    def load_optimizer_state_dict(self, checkpoint: Any) -> None:
        pass

    def remove_checkpoint(self, filepath: Any) -> None:
        if self.is_global_zero:
            shutil.rmtree(filepath, ignore_errors=True)


def loader_position(rest: dict[str, Any], per_epoch: int | None) -> tuple[int, int]:
    """(data epoch, batches of it already trained) where a checkpoint's loop state stopped.

    The epoch is the one the fit loop had started last (`epoch_progress.current.started` - 1), not
    the checkpoint's `epoch`: a run stopped by trainer.max_steps in the middle of an epoch counts
    that epoch as completed, so its `epoch` already names the next one, whose shuffle would replay
    sequences the run has trained on and skip the rest of the cut epoch. Saved on an epoch's last
    batch: the next epoch from its start."""
    loops = rest.get("loops", {}).get("fit_loop", {})
    try:
        done = int(loops["epoch_loop.batch_progress"]["current"]["processed"])
    except (KeyError, TypeError):
        done = 0
    try:
        epoch = int(loops["epoch_progress"]["current"]["started"]) - 1
    except (KeyError, TypeError):
        epoch = int(rest.get("epoch", 0))
    epoch = max(epoch, 0)
    if per_epoch is not None and done >= per_epoch:
        epoch, done = epoch + 1, 0
    return epoch, done


def reopen_cut_epoch(rest: dict[str, Any], epoch: int) -> None:
    """Make the loop state of a checkpoint cut in the middle of data epoch `epoch` say so.

    A run stopped by trainer.max_steps mid-epoch saves its fit loop with that epoch counted as
    processed (and, when saved after on_train_end, completed), so Lightning would resume at the
    next epoch while the loader continues the cut one: the resumed run's first "epoch" would be
    the cut epoch's remainder, and the run would end one epoch short of max_epochs. Marked
    started-not-processed (Lightning's RESTARTED_MID_EPOCH state, that of a checkpoint saved inside
    an epoch), Lightning resumes inside that epoch, as the loader does."""
    progress = rest.get("loops", {}).get("fit_loop", {}).get("epoch_progress")
    if not isinstance(progress, dict):
        return
    for part in ("current", "total"):
        p = progress.get(part)
        # processed (and, saved after on_train_end, completed) already count the cut epoch
        if isinstance(p, dict) and p.get("started", 0) >= 1 and p.get("processed") == p["started"]:
            p["processed"] = p["completed"] = p["started"] - 1
    rest["epoch"] = epoch


def carry_optimizer_steps(rest: dict[str, Any]) -> None:
    """Let a checkpoint resume under either optimization mode with its global step.

    Lightning counts optimizer steps in one of two trackers, the automatic loop's (a plain run)
    or the manual loop's (the train pipeline's `PipelinedRecModule`), and reads global_step from
    the one the resuming module uses: a run continued with `distributed.train_pipeline` switched
    on or off would restart at step 0 (max_steps, checkpoint names and the loss curve with it).
    Both trackers get the steps of the one that counted them."""
    fit = rest.get("loops", {}).get("fit_loop", {})
    auto = fit.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {}).get("step")
    manual = fit.get("epoch_loop.manual_optimization.optim_step_progress")
    if not isinstance(auto, dict) or not isinstance(manual, dict):
        return
    for part in ("current", "total"):
        a, m = auto.get(part), manual.get(part)
        if isinstance(a, dict) and isinstance(m, dict):
            for key in ("ready", "completed"):
                a[key] = m[key] = max(a.get(key, 0), m.get(key, 0))


def _batches_per_epoch(loader: Any, limit: int | float | None) -> int | None:
    try:
        n = len(loader)
    except TypeError:
        return None
    if isinstance(limit, int):
        return min(n, limit)
    if isinstance(limit, float) and limit < 1.0:
        return int(n * limit)
    return n


class SingleDeviceDCPStrategy(DCPCheckpointing, SingleDeviceStrategy):
    """One process (CPU or one GPU) writing and reading the same layout as the N-process strategy."""

    def __init__(self, manifest: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.manifest_extra = dict(manifest or {})


# -- the one checkpoint callback ------------------------------------------------------------------
class CheckpointCallback(Checkpoint):
    """Step-folder checkpoints (`dirpath/step-<N>`) with `last`/`best` pointers and keep-last-k.

    Saves every `every_n_epochs` epochs (after the module's epoch-end validation: a Checkpoint
    subclass runs after LightningModule.on_train_epoch_end), every `every_n_steps` optimizer
    steps, and at the end of fitting. `monitor` (a key of the module's `last_metrics`, with
    `mode` "max"/"min") moves `best` to a new step folder whenever it improves; pruning never
    removes a pointer's target. Ray mode (`ray_report=True`): every rank writes its shards into a
    local temp folder and calls `ray.train.report(metrics, checkpoint=...)`; Ray merges the ranks'
    folders and keeps the newest ones itself (no pointers: the driver publishes the final one).
    """

    def __init__(self, dirpath: str | Path | None, monitor: str | None = None, mode: str = "max",
                 every_n_epochs: int = 0, every_n_steps: int = 0, keep_last: int = 2,
                 ray_report: bool = False, report_workers: bool = False) -> None:
        super().__init__()
        self.dirpath = Path(dirpath) if dirpath else None
        self.monitor, self.mode = monitor, mode
        self.every_n_epochs, self.every_n_steps = every_n_epochs, every_n_steps
        self.keep_last = keep_last
        self.ray_report = ray_report
        #: with ray_report: add every worker's memory and local shards to the metrics
        #: (`worker/<rank>/rss_mib`, `.../hwm_mib`, `worker/<rank>/table/<name>/rows|bytes`)
        self.report_workers = report_workers
        self.best: float | None = None
        self.best_metrics: dict[str, float] = {}
        self.best_path: Path | None = None
        self.last_path: Path | None = None
        self._last_step = -1

    # resumable: the best value so far travels in the checkpoint's JSON trainer state
    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_metrics": self.best_metrics,
                "best_path": str(self.best_path) if self.best_path else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")
        self.best_metrics = dict(state_dict.get("best_metrics") or {})
        self.best_path = Path(state_dict["best_path"]) if state_dict.get("best_path") else None

    def _improved(self, value: float) -> bool:
        return self.best is None or (value > self.best if self.mode == "max" else value < self.best)

    def setup(self, trainer: "pl.Trainer", pl_module: Any, stage: str) -> None:
        # what a crashed save of a previous run into the same folder left (also when a resumed
        # run has nothing left to train and never saves)
        if self.dirpath is not None and trainer.is_global_zero:
            remove_stale_temps(self.dirpath)

    def on_train_batch_end(self, trainer: "pl.Trainer", *args: Any, **kwargs: Any) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self._save(trainer, ("last",))
        fault_point(f"train.step-{step}")

    def on_train_epoch_end(self, trainer: "pl.Trainer", module: Any) -> None:
        ep = trainer.current_epoch
        pointers: list[str] = []
        m = getattr(module, "last_metrics", None) or {}
        if self.monitor and m and getattr(module, "_validated_epoch", None) == ep and self.monitor in m:
            if self._improved(m[self.monitor]):
                self.best, self.best_metrics = float(m[self.monitor]), dict(m)
                pointers.append("best")
        if self.every_n_epochs and (ep + 1) % self.every_n_epochs == 0:
            pointers.append("last")
        if pointers:
            self._save(trainer, tuple(pointers))

    def on_train_end(self, trainer: "pl.Trainer", module: Any) -> None:
        self._save(trainer, ("last",))

    def _save(self, trainer: "pl.Trainer", pointers: tuple[str, ...]) -> None:
        step = trainer.global_step
        name = step_dir_name(step)
        if self.ray_report:
            if step != self._last_step:
                self._report(trainer, name)
            self._last_step = step
            return
        assert self.dirpath is not None
        path = self.dirpath / name
        # a step folder that already exists holds this very state (e.g. a resumed run that had
        # finished): never replace a published checkpoint
        if step != self._last_step and not path.is_dir():
            if trainer.is_global_zero:
                self.dirpath.mkdir(parents=True, exist_ok=True)
                remove_stale_temps(self.dirpath)
            trainer.save_checkpoint(path, weights_only=False)   # the whole loop state, not only weights
            self._last_step = step
        if trainer.is_global_zero:
            publish_step(self.dirpath, path, pointers, self.keep_last)
        trainer.strategy.barrier("unirec-checkpoint-published")
        if "best" in pointers:
            self.best_path = path
        if "last" in pointers:
            self.last_path = path

    def _report(self, trainer: "pl.Trainer", name: str) -> None:
        import ray.train

        from unirec_dist.training.ray_strategy import flatten_worker_stats

        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        metrics.update(step=trainer.global_step, epoch=trainer.current_epoch)
        if self.report_workers and hasattr(trainer.strategy, "worker_stats"):
            metrics.update(flatten_worker_stats(trainer.strategy.worker_stats()))
        tmp = Path(tempfile.mkdtemp(prefix="unirec-ckpt-"))
        try:
            trainer.save_checkpoint(tmp / name, weights_only=False)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp / name)))
            # Ray's controller takes a reported checkpoint on its next poll of the workers (every
            # 2 s): a worker that dies before that loses it, and the restart repeats those steps.
            # Wait until it is committed, so a crash after this point resumes from this step.
            ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def run_dir_state(out: Path) -> list[str]:
    """What a previous run left in `out` (the names `train`/`finetune` write), for the overwrite check."""
    return sorted(n for n in ("checkpoints", "logs", "metrics.json") if (out / n).exists())


def remove_run_paths(paths: list[Path]) -> None:
    """Remove what a previous run wrote (the `--overwrite` of train, finetune, pretrain): folders
    (not through a symlink), files and pointer links; a path that is not there is skipped."""
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


class RunExistsError(CheckpointError):
    """trainer.out_dir already holds a run (the command layer words the way out)."""

    def __init__(self, out: Path, found: list[str]) -> None:
        super().__init__(f"trainer.out_dir {out} already holds a run ({', '.join(found)})")
        self.out = out


@contextmanager
def fresh_run(out: str | os.PathLike, resume: bool) -> Iterator[None]:
    """Around a train/finetune run: a new run that fails before it published any checkpoint leaves
    nothing behind (its checkpoints/, logs/ and metrics.json are removed, and out_dir itself when
    this run created it and nothing else is there). A run that published a checkpoint keeps it, to
    be resumed. An operating-system error writing out_dir (disk full, read-only) becomes one line
    naming it."""
    out = Path(out).absolute()
    existed = out.exists()
    try:
        yield
    except BaseException as e:
        if not resume and not checkpoint_dirs(out / "checkpoints"):
            for n in run_dir_state(out):
                p = out / n
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            if not existed and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        if isinstance(e, OSError) and (e.filename is None or str(e.filename).startswith(str(out))):
            raise UnirecError(f"cannot write trainer.out_dir {out}: {e.strerror or e}") from None
        raise


def prepare_out_dir(out: str | os.PathLike, overwrite: bool, resume: bool) -> Path | None:
    """Check `out` before any work; returns the checkpoint to resume from (or None).

    A folder holding a previous run is refused unless `overwrite` (its checkpoints/, logs/ and
    metrics.json are removed, nothing else) or `resume` (continue from its newest checkpoint).
    """
    out = Path(out)
    found = run_dir_state(out)
    if resume:
        if "checkpoints" not in found:
            raise CheckpointError(f"trainer.out_dir {out}: no checkpoints/ to resume from")
        return resolve_checkpoint(out / "checkpoints")
    if found and not overwrite:
        raise RunExistsError(out, found)
    remove_run_paths([out / n for n in found])
    return None
