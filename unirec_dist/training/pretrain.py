"""The distributed pretraining job: config in, Ray Train TorchTrainer out.

    pretrain(cfg, workers=None, address=None) -> Path of the final checkpoint

Runs the training engineer's LightningModule and model (training/train.py `setup_training`) in
every Ray Train worker, with TorchRecStrategy sharding the tables (CPU/gloo or GPU/NCCL). Each
worker trains on its own disjoint slice of the prepared dataset (`rank`/`world_size` slicing in
training/data.py). Checkpoints are DCP directories reported to Ray (every rank reports its
shards, Ray merges them, keeps the newest `keep_last`); after a worker failure Ray restarts the
group (`distributed.max_failures`, default 3) and every worker resumes from the latest reported
checkpoint: model, optimizers, RNG, global step and data position (`training/checkpointing.py`);
a lost node's workers are placed again once the cluster has room (Ray Train waits for it). One
failure more ends the run with one line (`WorkersFailedError`) naming the last good checkpoint,
published like a final one but with the pointer `last` only. `distributed.placement_strategy`
spreads or packs the workers over the nodes.
`distributed.resume_from` (CLI `--resume-from`) starts a run from another run's checkpoint the
same way, under this run's worker count and sharding plan (DCP reshards on load).
At the end the final checkpoint is copied to `<out_dir>/checkpoints/step-<N>` with the pointers
`final` and `last` (the layout every writer uses, `unirec_dist.checkpoint.dcp`).

Everything a user can get wrong is checked in the driver before any worker starts: the dataset,
the sharding constraints (against the real model's tables, built on the meta device), the table
optimizer for the device, tables that cannot fit on the workers even sharded (`check_fit`, the
planner's estimate), a Ray address that does not answer (within seconds), and more workers
than the cluster's CPUs/GPUs (after `distributed.resource_wait_s`, while the autoscaler is asked
for them). The workers' device is decided from the cluster's resources, not the driver's.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from unirec_dist.compat.ray_api import replace_print_worker_logs
from unirec_dist.config.distributed import DistributedSection, PretrainConfig
from unirec_dist.config.loader import from_dict, to_dict
from unirec_dist.errors import CheckpointError, ConfigError, UnirecError
from unirec_dist.utils.atomic import output_error
from unirec_dist.utils.device import configure_cpu, dist_backend, worker_device
from unirec_dist.utils.jsonfile import load_json_object
from unirec_dist.utils.logging import RankZeroFilter, quiet_noisy_loggers

# one implementation of the address check and of the cluster start-up for every command
from unirec_dist.utils.ray_cluster import ClusterError, check_address, init_ray, shutdown_ray

log = logging.getLogger(__name__)

FINAL = "final"


# -- fail-fast checks -------------------------------------------------------------------------
def check_model(cfg: PretrainConfig) -> dict[str, Any]:
    """The real model's tables (built on meta), and the sharding constraints no device can run
    (unknown table or type, data_parallel): checked against CUDA, which allows the most, so
    that they fail before Ray starts. `check_device` checks the rest once the device is known."""
    from unirec_dist.embeddings.sharding import find_tables, validate_sharding
    from unirec_dist.models.factory import build_from_config
    from unirec_dist.training.train import check_inputs

    _, ds_manifest = check_inputs(cfg)
    # import torchrec (and tensordict, which computes tensors at import) outside the meta-device
    # context that build_model(device="meta") enters
    import torchrec  # noqa: F401

    model = build_from_config(cfg, ds_manifest, device="meta")
    tables = find_tables(model)
    validate_sharding(cfg.distributed.sharding, tables, "cuda")
    return tables


def check_device(cfg: PretrainConfig, tables: dict[str, Any], device_type: str) -> None:
    """Sharding constraints and table optimizer for the workers' device."""
    from unirec_dist.embeddings.sharding import validate_sharding, validate_table_optimizer

    validate_sharding(cfg.distributed.sharding, tables, device_type)
    kind, _ = cfg.distributed.table_optimizer.resolve(cfg.optim.tables, device_type, cfg.optim.lr)
    validate_table_optimizer(kind, device_type)


def check_fit(cfg: PretrainConfig, device_type: str, own_cluster: bool) -> None:
    """The sharding planner's feasibility check, in the driver on the meta-built model: tables
    that cannot fit on the workers even sharded (weights + fused optimizer state) are refused in
    one line with the planner's bytes needed and available, before any worker starts (each worker
    would otherwise allocate, plan the same and fail). Memory per worker: distributed.memory_gb,
    else on the embedded cluster this host's RAM (or GPU memory) shared by the workers, as the
    workers' own planner sees it; a joined cluster's nodes are not known here, so without
    memory_gb the workers' planner alone decides there."""
    from unirec_dist.embeddings import sharding as S
    from unirec_dist.models.factory import build_from_config
    from unirec_dist.training.train import check_inputs

    dist = cfg.distributed
    if not own_cluster and not dist.memory_gb:
        return
    _, ds_manifest = check_inputs(cfg)
    import torchrec  # noqa: F401  (before the meta-device context, see check_model)

    model = build_from_config(cfg, ds_manifest, device="meta")
    tables = S.find_tables(model)
    kind, lr = dist.table_optimizer.resolve(cfg.optim.tables, device_type, cfg.optim.lr)
    S.apply_table_optimizer(model, kind, lr, device_type=device_type)
    memory = int(dist.memory_gb * 2**30) if dist.memory_gb else None
    planner_log = logging.getLogger("torchrec.distributed.planner")
    level = planner_log.level
    planner_log.setLevel(logging.ERROR)     # its advice on building a Topology, as in the workers
    try:
        topo = S.make_topology(dist.workers, device_type, memory, local_world_size=dist.workers)
        S.plan_sharding(model, topo, S.make_constraints(tables, dist.sharding, device_type),
                        S.make_sharders(device_type), batch_size=cfg.data.batch_size)
    finally:
        planner_log.setLevel(level)


def check_resume_from(cfg: PretrainConfig) -> None:
    """distributed.resume_from: a pretraining checkpoint of this dataset's vocabulary (any worker
    count and sharding plan: DCP reshards it on load), made absolute for the workers."""
    from unirec_dist.checkpoint.dcp import check_vocab, read_manifest, resolve_checkpoint
    from unirec_dist.training.train import check_inputs

    dist = cfg.distributed
    if not dist.resume_from:
        return
    src = Path(dist.resume_from).expanduser()
    if not src.exists():
        raise ConfigError(f"distributed.resume_from: {src} does not exist")
    path = resolve_checkpoint(src)
    manifest = read_manifest(path)
    if manifest.get("kind") != "pretrain":
        raise CheckpointError(f"distributed.resume_from: {path} is a {manifest.get('kind')!r} checkpoint, "
                              "not a pretraining one (fine-tune it with `unirec finetune`)")
    _, ds_manifest = check_inputs(cfg)
    check_vocab(manifest, str(ds_manifest.get("vocab_hash")), f"distributed.resume_from {path}")
    step, max_steps = manifest.get("step"), cfg.trainer.max_steps
    if isinstance(step, int) and max_steps != -1 and step >= max_steps:
        raise ConfigError(f"trainer.max_steps {max_steps}: distributed.resume_from {path} is already at step "
                          f"{step}, nothing left to train (set trainer.max_steps above {step})")
    dist.resume_from = str(path.resolve())


def resolve_paths(cfg: PretrainConfig) -> None:
    """Make every path of the config absolute, on the driver: a Ray worker runs in another
    folder, where a relative path the driver's checks accepted would name nothing."""
    cfg.data.path = str(Path(cfg.data.path).expanduser().resolve())
    cfg.trainer.out_dir = str(Path(cfg.trainer.out_dir).expanduser().resolve())
    if cfg.distributed.storage_path:
        cfg.distributed.storage_path = str(Path(cfg.distributed.storage_path).expanduser().resolve())


JOINED_RESOURCE_WAIT_S = 600.0


def wait_for_resources(workers: int, cpus_per_worker: int, use_gpu: bool, timeout_s: float,
                       poll_s: float = 2.0, placement_strategy: str = "PACK") -> None:
    """Return once the cluster can place every worker; refuse after `timeout_s` seconds.

    Meanwhile the workers' bundles are requested from the autoscaler
    (`ray.autoscaler.sdk.request_resources`; Ray Train's own placement group would ask only inside
    `fit`, which then waits forever on a cluster that cannot grow), and the request is cleared
    again so idle nodes can scale down after the job. Timeout 0: refuse at once. The strict
    placement strategies also need the right nodes: STRICT_SPREAD one node per worker,
    STRICT_PACK one node for all.
    """
    import ray

    gpus = 1 if use_gpu else 0

    def nodes_fitting(cpus: int, gpu: int) -> int:
        return sum(1 for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= cpus
                   and n["Resources"].get("GPU", 0) >= gpu)

    def shortfall() -> str | None:
        res = ray.cluster_resources()
        need_cpu, have_cpu = workers * cpus_per_worker, int(res.get("CPU", 0))
        if need_cpu > have_cpu:
            return f"distributed.workers {workers} needs {need_cpu} CPUs ({cpus_per_worker} per worker) but the Ray cluster has {have_cpu}"
        if use_gpu and workers > int(res.get("GPU", 0)):
            return f"distributed.workers {workers} needs {workers} GPUs but the Ray cluster has {int(res.get('GPU', 0))}"
        per_node = f"{cpus_per_worker} CPU{'s' if cpus_per_worker > 1 else ''}" + (" and 1 GPU" if use_gpu else "")
        if placement_strategy == "STRICT_SPREAD" and workers > 1:
            have = nodes_fitting(cpus_per_worker, gpus)
            if have < workers:
                return (f"distributed.workers {workers} with distributed.placement_strategy STRICT_SPREAD needs {workers} "
                        f"nodes with {per_node} each but the Ray cluster has {have}")
        if placement_strategy == "STRICT_PACK" and workers > 1 and not nodes_fitting(need_cpu, gpus * workers):
            return (f"distributed.workers {workers} with distributed.placement_strategy STRICT_PACK needs one node with "
                    f"{need_cpu} CPUs" + (f" and {workers} GPUs" if use_gpu else "") + " but the Ray cluster has none")
        return None

    missing = shortfall()
    if missing is None:
        return
    if timeout_s <= 0:
        raise ClusterError(missing)
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}] * workers)
    log.warning("%s: waiting up to %g s for it to grow (distributed.resource_wait_s)", missing, timeout_s)
    deadline = time.monotonic() + timeout_s
    try:
        while missing is not None:
            if time.monotonic() >= deadline:
                raise ClusterError(f"{missing} (after waiting {timeout_s:g} s, distributed.resource_wait_s)")
            time.sleep(poll_s)
            missing = shortfall()
        log.info("the Ray cluster has the resources for %d worker(s)", workers)
    finally:
        request_resources(bundles=[])


# -- the worker -------------------------------------------------------------------------------
def _quiet_worker() -> None:
    logging.getLogger().setLevel(logging.WARNING)   # fbgemm's "Successfully loaded" lines are INFO
    quiet_noisy_loggers()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "torch.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    logging.getLogger("torchrec.distributed.planner").setLevel(logging.ERROR)
    # Ray Train logs a failing worker's whole traceback ("Error in training function"), which
    # log_to_driver would print on the terminal of every restart; the driver reports a failure
    # in one line (`workers_failed`) and the traceback stays in Ray's session log files
    for h in logging.getLogger("ray.train").handlers:
        if isinstance(h, logging.StreamHandler):
            h.addFilter(lambda r: not r.getMessage().startswith("Error in training function"))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """What every Ray Train worker runs: the Lightning loop with TorchRecStrategy."""
    _quiet_worker()
    import lightning as L
    import ray.train
    import torch
    from ray.train.lightning import RayLightningEnvironment

    from unirec_dist.training.checkpointing import CheckpointCallback
    from unirec_dist.training.ray_strategy import RayTorchRecStrategy
    from unirec_dist.training.strategy import ShardingOptions
    from unirec_dist.training.throughput import TrainThroughput
    from unirec_dist.training.train import make_loggers, setup_training

    logging.getLogger("unirec_dist").setLevel(logging.INFO if config.get("verbose") else logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    os.environ["RANK"] = str(rank)      # rank-0 log filter
    for h in logging.getLogger().handlers:
        h.addFilter(RankZeroFilter())
    cfg = from_dict(PretrainConfig, config["cfg"], where="pretrain config")
    dist = cfg.distributed
    device_type = config["device_type"]   # decided from the cluster's resources (utils/device.py)
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"the workers run on cuda but worker {rank} on {socket.gethostname()} sees no GPU")
    configure_cpu(cfg.trainer.threads if device_type == "cpu" else None)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    # tables on the meta device: each rank allocates only its own shards (a 20M-row table is never
    # built in full on a rank); the strategy fills them with the seed's deterministic init
    import torchrec  # noqa: F401  (imported before any meta-device construction)

    st = setup_training(cfg, rank=rank, world_size=world, table_device="meta",
                        train_pipeline=dist.train_pipeline == "sparse_dist")
    kind, lr = dist.table_optimizer.resolve(cfg.optim.tables, device_type, cfg.optim.lr)
    sharding = ShardingOptions(
        constraints=dict(dist.sharding), table_optimizer=kind, table_lr=lr, table_eps=dist.table_optimizer.eps,
        table_weight_decay=dist.table_optimizer.weight_decay,
        memory_bytes=int(dist.memory_gb * 2**30) if dist.memory_gb else None, batch_size=cfg.data.batch_size,
        # the workers on one node share its memory (the planner's default per worker)
        local_world_size=ctx.get_local_world_size(), init_seed=cfg.trainer.seed,
    )
    strategy = RayTorchRecStrategy(
        sharding=sharding,
        # "config" is the training schema (what load_retriever rebuilds the model from);
        # the distributed section sits beside it
        manifest={"kind": "pretrain", "config": {k: v for k, v in to_dict(cfg).items() if k != "distributed"},
                  "distributed": {**to_dict(dist), "workers": world}, "dataset": st.dataset,
                  "table_optimizer": {"kind": kind, "lr": lr, "optim.tables": cfg.optim.tables}},
    )
    loggers = []
    if rank == 0:
        cfg.trainer.out_dir = config.get("work_dir") or cfg.trainer.out_dir
        loggers = make_loggers(cfg, st.dataset)
    trainer = L.Trainer(
        accelerator="gpu" if device_type == "cuda" else "cpu",
        devices="auto",
        strategy=strategy,
        plugins=[RayLightningEnvironment()],
        max_epochs=cfg.trainer.max_epochs,
        max_steps=cfg.trainer.max_steps,
        limit_train_batches=cfg.trainer.limit_train_batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        # rank 0 alone writes trainer.loggers (logs/metrics.csv, MLflow) under the driver's out_dir
        logger=loggers or False,
        enable_checkpointing=True,   # CheckpointCallback (a Checkpoint) is the only checkpoint callback
        enable_model_summary=False,
        enable_progress_bar=bool(config.get("progress", True)) and rank == 0,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        use_distributed_sampler=False,   # the loader slices by rank itself
        # throughput first: the final checkpoint's report (on_train_end) carries its figures
        callbacks=[TrainThroughput(warmup=int(config.get("throughput_warmup", 3))),
                   CheckpointCallback(None, every_n_steps=dist.checkpoint_every_n_steps, ray_report=True,
                                      report_workers=True)],
        precision=cfg.trainer.precision,
        default_root_dir=config.get("work_dir"),
    )
    # a run continued from another run's checkpoint (distributed.resume_from, any worker count or
    # plan: DCP reshards on load); Ray's own checkpoint of this run, after a restart, comes first
    ckpt = ray.train.get_checkpoint()
    with contextlib.ExitStack() as stack:
        ckpt_path = dist.resume_from
        if ckpt is not None:
            # a restarted worker group: continue from the latest reported checkpoint, read in place
            # when Ray's storage is a local folder (`as_directory`: no copy of a table-sized
            # checkpoint; a remote one is downloaded to a temp folder removed on exit)
            ckpt_path = stack.enter_context(ckpt.as_directory())
        trainer.fit(st.module, train_dataloaders=st.batches, ckpt_path=ckpt_path)
    from unirec_dist.training.tracking import log_final_metrics

    log_final_metrics(loggers, {"last_val": st.module.last_metrics, "steps": trainer.global_step,
                                "epochs": trainer.current_epoch})


def worker_stats_from_metrics(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-worker figures rank 0 reported (flat `worker/<rank>/<key>` metrics) as a list."""
    out: dict[int, dict[str, Any]] = {}
    for k, v in metrics.items():
        parts = k.split("/")
        if len(parts) >= 3 and parts[0] == "worker" and parts[1].isdigit():
            d = out.setdefault(int(parts[1]), {"rank": int(parts[1])})
            if len(parts) == 3:
                d[parts[2]] = v
            else:   # worker/<rank>/table/<name>/<field>
                d.setdefault("tables", {}).setdefault(parts[3], {})[parts[4]] = v
    return [out[r] for r in sorted(out)]


# -- the driver -------------------------------------------------------------------------------
_NOISE = (
    "The topology was constructed directly", "It is recommended to use `self.log(",
    "Checkpoint successfully created", "Setting up process group", "sync_dist=True",
    "Successfully loaded", "FutureWarning", "warnings.warn(", "DeprecationWarning",
)


def filter_worker_logs() -> None:
    """Forward only the training workers' own output (rank 0's progress bar, our log lines) to
    the terminal, without Ray's "(RayTrainWorker pid=...)" prefix; Ray's controller/cleaner
    chatter and known library noise stay in Ray's log files (/tmp/ray/session_latest/logs)."""

    def print_worker_logs(data, print_file, ignore_prefix: bool = False):
        name = str(data.get("actor_name") or data.get("task_name") or "")
        if "RayTrainWorker" not in name:
            return
        for line in data.get("lines", []):
            if not any(n in line for n in _NOISE):
                print(line, file=print_file)

    replace_print_worker_logs(print_worker_logs)


def _ray_init(address: str | None, num_cpus: int | None) -> bool:
    """Start an embedded local cluster (returns True: we own it) or join `address`."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "0")
    if ray.is_initialized():
        return False
    filter_worker_logs()
    kw: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": True, "configure_logging": True}
    return init_ray(address, **kw) if address else init_ray(None, num_cpus=num_cpus, **kw)


def publish_final(checkpoint: Any, root: Path, keep_last: int,
                  pointers: tuple[str, ...] = (FINAL, "last")) -> tuple[Path, dict[str, Any]]:
    """Copy one of Ray's (merged) checkpoints into `root/step-<N>`, check it against its own
    manifest, and point `pointers` at it (the layout of `unirec_dist.checkpoint.dcp`)."""
    from unirec_dist.checkpoint.dcp import (
        TMP_MARKER,
        publish_step,
        remove_stale_temps,
        step_dir_name,
        verify_checkpoint,
    )

    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root)
    tmp = root / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with checkpoint.as_directory() as src:
        # hard links where Ray's storage and `root` share a filesystem (the default storage is
        # <out_dir>/ray): the published step folder costs no second copy of the tables; nothing
        # writes into a checkpoint's files after it is reported, and pruning either side only
        # removes its own link. Another filesystem (or a downloaded remote checkpoint): a copy.
        shutil.copytree(src, tmp, copy_function=link_or_copy)
    (tmp / TMP_MARKER).touch()
    manifest = load_json_object(tmp / "manifest.json", CheckpointError)
    verify_checkpoint(tmp, manifest)
    final = root / step_dir_name(int(manifest.get("step", 0)))
    if final.exists():
        shutil.rmtree(tmp)
    else:
        (tmp / TMP_MARKER).unlink()
        os.replace(tmp, final)
    publish_step(root, final, pointers, keep_last)
    return final, manifest


def link_or_copy(src: str, dst: str) -> None:
    """`dst` as a hard link to `src`, or a copy where linking is refused (another filesystem,
    one without hard links)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class WorkersFailedError(UnirecError):
    """The run ended: its workers failed more often than distributed.max_failures allows.
    `resumable`: a checkpoint was reported, from which resuming the run continues (the command
    layer words how)."""

    def __init__(self, message: str, resumable: bool = False) -> None:
        super().__init__(message)
        self.resumable = resumable


def _worker_death(error: BaseException) -> bool:
    from ray.exceptions import RayActorError

    return isinstance(getattr(error, "health_check_failure", error), RayActorError)


def _last_line(error: BaseException, limit: int = 200) -> str:
    """The line of a worker's error worth one line: Ray Train hands back a worker's exception as its
    traceback text, whose last line is `Type: message`."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    text = lines[-1] if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def workers_failed(error: Exception, dist: DistributedSection, run_dir: Path, root: Path) -> WorkersFailedError:
    """The one line that ends a failed run: how often the workers failed, the last error, and the
    last good checkpoint, published as `root/step-<N>` with the pointer `last` so that evaluate,
    finetune and export read it. Ray keeps its own copy in `run_dir`, from which resuming the run
    (`pretrain(..., resume=True)`) continues (Ray Train restores a run from its storage path and name)."""
    from ray.train import Result, WorkerGroupError

    try:
        checkpoint = Result.from_path(str(run_dir)).checkpoint
    except RuntimeError:   # no checkpoint was ever reported (Ray wrote no snapshot)
        checkpoint = None
    if checkpoint is None:
        where = "no checkpoint was written before it"
    else:
        path, manifest = publish_final(checkpoint, root, dist.keep_last, pointers=("last",))
        where = f"last good checkpoint: {path} (step {manifest.get('step')})"
    if isinstance(error, WorkerGroupError):
        # the cause rather than its echo: a dead worker (a lost node, a killed process) before
        # the errors it caused on the others (a collective's "connection reset"), else rank order
        failures = sorted(error.worker_failures.items(), key=lambda kv: (not _worker_death(kv[1]), kv[0]))
        if not failures:
            last = _last_line(error)
        elif _worker_death(failures[0][1]):
            rank, e = failures[0]
            last = f"worker {rank} was lost with its process or node ({type(getattr(e, 'health_check_failure', e)).__name__})"
        else:
            last = _last_line(failures[0][1])
        n = dist.max_failures + 1
        what = f"the training workers failed {n} time{'s' if n > 1 else ''} (distributed.max_failures: {dist.max_failures})"
    else:   # the controller's own failure (e.g. the workers never started)
        last = _last_line(getattr(error, "controller_failure", error))
        what = "the Ray Train controller failed"
    return WorkersFailedError(f"{what}; last error: {last}; {where}", resumable=checkpoint is not None)


def check_out_dir(out: Path, run_storage: Path, overwrite: bool, resume: bool) -> None:
    """A second `pretrain` into an out_dir that holds a run is refused unless asked: Ray Train
    resumes a run of the same name and storage path from its newest reported checkpoint, so
    without this check a second run (even with another config) would silently continue the
    first, and its logs would be replaced. `overwrite` removes that run (its checkpoints/, logs/,
    pretrain.json, metrics.json and its Ray run folder; nothing else); `resume` keeps it, for Ray
    to continue from."""
    from unirec_dist.training.checkpointing import RunExistsError, remove_run_paths, run_dir_state

    found = run_dir_state(out) + (["pretrain.json"] if (out / "pretrain.json").exists() else [])
    if run_storage.exists():
        found.append(str(run_storage))
    if resume:
        if not run_storage.exists():
            raise CheckpointError(f"no pretraining run to resume at {run_storage} (the Ray run folder of "
                                  f"trainer.out_dir {out} with this config's name)")
        return
    if found and not overwrite:
        raise RunExistsError(out, sorted(set(found)))
    remove_run_paths([out / n for n in run_dir_state(out)] + [out / "pretrain.json", run_storage])


def pretrain(cfg: PretrainConfig, workers: int | None = None, address: str | None = None,
             progress: bool = True, verbose: bool = False, overwrite: bool = False,
             resume: bool = False) -> Path:
    """Run the distributed pretraining job; returns `<out_dir>/checkpoints/final`, the pointer to
    the final checkpoint's step folder (`<out_dir>/checkpoints/step-<N>`). An out_dir that holds
    a run is refused unless `overwrite` (replace it) or `resume` (continue it: Ray Train restarts
    from the run's newest reported checkpoint)."""
    t0 = time.perf_counter()
    dist = cfg.distributed
    if workers is not None:
        if workers < 1:
            raise ConfigError(f"distributed.workers: must be >= 1, got {workers}")
        dist.workers = workers
    if address is not None:
        dist.address = address
    if dist.address:
        check_address(dist.address)      # before any heavy import: seconds, not minutes
    resolve_paths(cfg)
    tables = check_model(cfg)
    check_resume_from(cfg)
    if dist.device != "auto":            # known before Ray starts: fail before it does
        check_device(cfg, tables, dist.device)
    out = Path(cfg.trainer.out_dir).resolve()
    storage = Path(dist.storage_path).resolve() if dist.storage_path else out / "ray"
    try:   # a read-only or full out_dir: one line now, not a traceback from every worker later
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(out, e) from None
    check_out_dir(out, storage / cfg.name, overwrite, resume)
    # the embedded cluster gets this machine's real CPU count, so too many workers is refused
    # below instead of oversubscribing the host
    own = _ray_init(dist.address, None if dist.address else (os.cpu_count() or 1))
    import ray

    try:
        # the workers' device comes from the cluster's resources, not this driver's hardware
        resources = ray.cluster_resources()
        if own:   # the embedded cluster is this machine with this torch build (a CPU build sees no GPU)
            import torch

            resources["GPU"] = min(resources.get("GPU", 0), torch.cuda.device_count())
        device_type, note = worker_device(dist.device, dist.workers, resources, can_grow=not own)
        if note:
            log.warning("%s", note)
        use_gpu = device_type == "cuda"
        check_device(cfg, tables, device_type)
        check_fit(cfg, device_type, own)
        wait = dist.resource_wait_s if dist.resource_wait_s is not None else (0.0 if own else JOINED_RESOURCE_WAIT_S)
        wait_for_resources(dist.workers, dist.cpus_per_worker, use_gpu, wait,
                           placement_strategy=dist.placement_strategy)
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        kind, lr = dist.table_optimizer.resolve(cfg.optim.tables, device_type, cfg.optim.lr)
        log.info("pretraining %s on %d %s worker(s); tables: %s; table optimizer: fused %s lr %g (optim.tables: %s), "
                 "dense: %s lr %g", cfg.name, dist.workers, device_type,
                 ", ".join(f"{n} {t.num_embeddings}x{t.embedding_dim}" for n, t in sorted(tables.items())),
                 kind, lr, cfg.optim.tables, cfg.optim.name, cfg.optim.lr)
        trainer = TorchTrainer(
            train_loop_per_worker=train_loop_per_worker,
            train_loop_config={
                "cfg": to_dict(cfg), "device_type": device_type, "progress": progress, "verbose": verbose,
                "work_dir": str(out),
            },
            scaling_config=ScalingConfig(num_workers=dist.workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": dist.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
                                         placement_strategy=dist.placement_strategy),
            torch_config=TorchConfig(backend=dist_backend("cuda" if use_gpu else "cpu")),
            run_config=RunConfig(
                name=cfg.name,
                storage_path=str(storage),
                failure_config=FailureConfig(max_failures=dist.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=dist.keep_last),
            ),
        )
        from ray.train import TrainingFailedError

        try:
            result = trainer.fit()   # raises once the failures exceed distributed.max_failures
        except TrainingFailedError as e:
            raise workers_failed(e, dist, storage / cfg.name, out / "checkpoints") from None
        if result.checkpoint is None:   # e.g. a starting checkpoint already past trainer.max_epochs
            raise CheckpointError(f"{out}: the run trained nothing and wrote no checkpoint (the starting "
                                  "checkpoint already reached trainer.max_steps / trainer.max_epochs?)")
        final, manifest = publish_final(result.checkpoint, out / "checkpoints", dist.keep_last)
        summary = {
            "checkpoint": str(final),
            "workers": dist.workers,
            "device": device_type,
            "steps": manifest.get("step"),
            "epochs": manifest.get("epoch"),
            "metrics": {k: v for k, v in (result.metrics or {}).items()
                        if isinstance(v, (int, float)) and not k.startswith("worker/")},
            "plan": manifest.get("plan"),
            "worker_stats": worker_stats_from_metrics(result.metrics or {}),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        (out / "pretrain.json").write_text(json.dumps(summary, indent=2, default=str))
        log.info("done in %.1f s; checkpoint %s", summary["seconds"], final)
        return final.parent / FINAL
    finally:
        if own:
            shutdown_ray()
