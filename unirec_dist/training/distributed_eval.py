"""`unirec evaluate --workers N` and `unirec recommend --workers N`: a checkpoint loaded row-wise
sharded over N Ray Train workers, scored without any process holding the whole item table.

    evaluate_sharded(checkpoint, data, workers, split=..., ks=..., ...) -> report (as `metrics.evaluate.evaluate`)
    recommend_sharded(checkpoint, data, workers, users, k, out, ...) -> rows written to `out`

Workers are started like `unirec pretrain` starts them (Ray Train TorchTrainer, gloo on CPU or
NCCL on GPU, an embedded local cluster of our own unless `address` is given). Each worker
builds the model with its tables on the meta device, shards it with DMP under a plan that puts
the item table row-wise (`load_sharded_retriever`; other tables are the planner's choice), and
loads the checkpoint's model state with DCP, which reshards whatever plan wrote it. Scoring is
`unirec_dist.metrics.sharded.ranked_lists`, the one path of every evaluation: each rank scores all
queries against its own item rows, and the per-rank top-K are merged into lists identical to a
single process's. Every rank computes the same lists; rank 0 returns the report (with each
rank's peak memory and table shard) or writes the Parquet file (atomically).

What a worker holds: its row block of every row-wise table, the tables the planner gave it,
the dense layers, the query vectors and top-K lists of one block of queries, and one item chunk's
vectors and scores (`unirec_dist.metrics.sharded`).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RESULT = "result.json"


def load_sharded_retriever(checkpoint: str | os.PathLike, device: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The checkpoint's model with its item table row-wise sharded over the process group (DMP),
    weights loaded by DCP. Collective: every rank calls it. Returns (model in eval mode, the
    checkpoint manifest, this rank's table shards {table: rows, cols, bytes, row_offset})."""
    import torch
    import torch.distributed as dist

    from unirec_dist.checkpoint.dcp import load_checkpoint, read_manifest, resolve_checkpoint
    from unirec_dist.config.loader import from_dict
    from unirec_dist.config.train import TrainConfig
    from unirec_dist.embeddings import sharding as S
    from unirec_dist.embeddings.features import ITEM_TABLE
    from unirec_dist.errors import CheckpointError
    from unirec_dist.models.factory import MODEL_KEY, build_from_config
    from unirec_dist.training.checkpointing import ModelState

    path = resolve_checkpoint(checkpoint)
    manifest = read_manifest(path)
    if "config" not in manifest or "dataset" not in manifest:
        raise CheckpointError(f"{path}: manifest has no config/dataset; not a training checkpoint")
    cfg = from_dict(TrainConfig, manifest["config"], where=f"{path}/manifest.json config")
    import torchrec  # noqa: F401  (imported before any meta-device construction)

    # tables on meta: DMP allocates only this rank's shards, which the load then fills
    model = build_from_config(cfg, manifest["dataset"], device=device, table_device="meta")
    tables = S.find_tables(model)
    dtype = torch.device(device).type
    # the item id table row-wise: rank r holds the rows it scores (`metrics.sharded.item_block`).
    # Pooled content tables table-wise: a row-wise one sums each bag in per-rank parts, which
    # rounds differently from one process and would break "identical to one process"
    wanted = {n: "row_wise" if n == ITEM_TABLE else "table_wise" for n, t in tables.items()
              if n == ITEM_TABLE or t.kind == "bag"}
    constraints = S.make_constraints(tables, wanted, dtype)
    world = dist.get_world_size()
    topo = S.make_topology(world, dtype, local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    sharders = S.make_sharders(dtype)
    plan = S.plan_sharding(model, topo, constraints, sharders, pg=dist.group.WORLD)
    S.shard_model(model, torch.device(device), plan, sharders, pg=dist.group.WORLD)
    manifest = load_checkpoint(path, {MODEL_KEY: ModelState(model)})
    model.eval()
    return model, manifest, S.shard_stats(model, tables)


# -- the worker -------------------------------------------------------------------------------
def worker_loop(config: dict[str, Any]) -> None:
    """What every Ray Train worker runs: load sharded, score, rank 0 reports or writes."""
    from unirec_dist.training.pretrain import _quiet_worker

    _quiet_worker()
    import ray.train
    import torch
    import torch.distributed as dist

    from unirec_dist.data.dataset import PreparedDataset
    from unirec_dist.training.strategy import process_memory
    from unirec_dist.utils.device import configure_cpu

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = torch.device("cuda", ctx.get_local_rank()) if config["device_type"] == "cuda" else torch.device("cpu")
    configure_cpu(config.get("threads") if device.type == "cpu" else None)
    t0 = time.perf_counter()
    model, manifest, shards = load_sharded_retriever(config["checkpoint"], device)
    loaded = time.perf_counter()
    dataset = PreparedDataset.open(config["data"])
    out: dict[str, Any] = {}
    if config["task"] == "evaluate":
        from unirec_dist.metrics.evaluate import evaluate

        out["report"] = evaluate(model, dataset, split=config["split"], ks=config["ks"], mask_seen=config["mask_seen"],
                                 batch_size=config["batch_size"], progress=False, per_user=config["per_user"])
    else:
        from unirec_dist.serving.topn import all_users, recommend, write_parquet_atomic

        users = config["users"] if config["users"] is not None else all_users(dataset)
        table = recommend(model, dataset, users, config["k"], exclude_seen=config["exclude_seen"],
                          batch_size=config["batch_size"], display_fields=config["display_fields"])
        if rank == 0:
            write_parquet_atomic(table, config["out"])
        out["rows"] = table.num_rows
        out["users"] = len(users)
    mine = {"rank": rank, **process_memory(), "load_s": round(loaded - t0, 3),
            "score_s": round(time.perf_counter() - loaded, 3), "tables": shards}
    stats: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(stats, mine)
    out["workers"] = sorted(stats, key=lambda d: d["rank"])
    out["step"], out["epoch"] = manifest.get("step"), manifest.get("epoch")
    # every worker reports (a report is collective); rank 0's result travels as a one-file
    # checkpoint: Ray Train keeps only metrics that come with a checkpoint
    tmp = Path(tempfile.mkdtemp(prefix="unirec-sharded-eval-"))
    try:
        checkpoint = None
        if rank == 0:
            (tmp / RESULT).write_text(json.dumps(out))
            checkpoint = ray.train.Checkpoint.from_directory(str(tmp))
        ray.train.report({"rank": rank}, checkpoint=checkpoint)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- the driver -------------------------------------------------------------------------------
def _run(config: dict[str, Any], workers: int, address: str | None) -> dict[str, Any]:
    """Start (or join) Ray, run `worker_loop` on `workers` workers, return rank 0's result."""
    from unirec_dist.errors import ConfigError
    from unirec_dist.training.pretrain import _ray_init, wait_for_resources
    from unirec_dist.utils.ray_cluster import shutdown_ray

    if workers < 1:
        raise ConfigError(f"the number of evaluation workers must be >= 1, got {workers}")
    own = _ray_init(address, None if address else (os.cpu_count() or 1))
    import ray

    storage = Path(tempfile.mkdtemp(prefix="unirec-sharded-eval-"))
    try:
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        from unirec_dist.utils.device import dist_backend, worker_device

        resources = ray.cluster_resources()
        if own:   # the embedded cluster is this machine with this torch build
            import torch

            resources["GPU"] = min(resources.get("GPU", 0), torch.cuda.device_count())
        device_type, note = worker_device("auto", workers, resources, can_grow=not own)
        if note:
            log.warning("%s", note)
        use_gpu = device_type == "cuda"
        wait_for_resources(workers, 1, use_gpu, 0.0 if own else 600.0)
        trainer = TorchTrainer(
            train_loop_per_worker=worker_loop,
            train_loop_config={**config, "device_type": device_type},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": 1, **({"GPU": 1} if use_gpu else {})}),
            torch_config=TorchConfig(backend=dist_backend(device_type)),
            run_config=RunConfig(name="unirec-sharded-eval", storage_path=str(storage),
                                 failure_config=FailureConfig(max_failures=0)),
        )
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        if result.checkpoint is None:
            raise RuntimeError("the evaluation workers finished without a result")
        with result.checkpoint.as_directory() as d:
            return json.loads((Path(d) / RESULT).read_text())
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if own:
            shutdown_ray()


def evaluate_sharded(checkpoint: str | os.PathLike, data: str | os.PathLike, workers: int, split: str = "test",
                     ks: list[int] | tuple[int, ...] = (10, 50, 200), mask_seen: bool = False, batch_size: int = 1024,
                     per_user: bool = False, threads: int | None = None,
                     address: str | None = None) -> dict[str, Any]:
    """`metrics.evaluate.evaluate`'s report for the checkpoint, computed on `workers` Ray workers
    with the item table row-wise sharded; plus "workers": per rank {rank, rss_mib, hwm_mib
    (peak), load_s, score_s, tables: its shard of each table}."""
    t0 = time.perf_counter()
    out = _run({"task": "evaluate", "checkpoint": str(Path(checkpoint).resolve()), "data": str(Path(data).resolve()),
                "split": split, "ks": list(ks), "mask_seen": mask_seen, "batch_size": batch_size,
                "per_user": per_user, "threads": threads}, workers, address)
    report = out["report"]
    report["workers"] = out["workers"]
    report["seconds_total"] = round(time.perf_counter() - t0, 4)
    return report


def recommend_sharded(checkpoint: str | os.PathLike, data: str | os.PathLike, workers: int, users: list[str] | None,
                      k: int, out: str | os.PathLike, exclude_seen: bool = True, batch_size: int = 1024,
                      threads: int | None = None, address: str | None = None,
                      display_fields: list[str] | None = None) -> dict[str, Any]:
    """Top-k lists of `users` (None: every user) on `workers` Ray workers, written by rank 0 to
    `out` as `serving.topn.recommend`'s Parquet; returns {rows, users, workers}."""
    return _run({"task": "recommend", "checkpoint": str(Path(checkpoint).resolve()), "data": str(Path(data).resolve()),
                 "users": users, "k": int(k), "exclude_seen": exclude_seen, "batch_size": batch_size,
                 "out": str(Path(out).resolve()), "threads": threads, "display_fields": display_fields},
                workers, address)
