"""A Lightning strategy for TorchRec: DMP-sharded tables, no outer DDP, DCP checkpoints.

Lightning has no TorchRec strategy and `strategy="ddp"` around a DMP model fails (gloo collective
mismatch: DDP and DMP both communicate).
`TorchRecStrategy` is a DDPStrategy (so process-group setup, barriers, reduce and the cluster
environments all work) that instead:

- in `setup`, plans the model's embedding tables over a Topology of the real world (device,
  world size, memory) with per-table constraints, attaches the fused table optimizer and wraps
  the model in DistributedModelParallel **in place**: the LightningModule keeps its own model
  object (now with sharded tables), so it can call any method of it, not only `forward`;
- tables built on the meta device (the pretraining path: `build_model(table_device="meta")`)
  are allocated by DMP only as each rank's shards and filled with the deterministic init
  `sharding.fill_table_init(seed=init_seed)`, a function of (seed, table, global row), so 1 and
  N workers start from the same weights without any rank ever holding a whole table. Tables
  built on CPU keep their own init (copied into the shards; costs a full copy per rank). Dense
  layers are replicated: rank 0's are broadcast;
- never wraps in DDP: dense gradients are averaged across ranks right after backward
  (one coalesced all-reduce). Sharded tables' gradients are averaged by TorchRec's all-to-all
  (gradient division), so N workers on B/N rows match 1 process on B rows;
- keeps the LightningModule's own optimizer (and LR schedulers) for dense parameters, minus the
  table weights, which the fused optimizer updates inside backward;
- saves and loads checkpoints with torch.distributed.checkpoint on every rank (model, fused
  table state, dense optimizer state, RNG, Lightning loop state as JSON) in the one unirec
  checkpoint layout (`training.checkpointing.DCPCheckpointing`, `unirec_dist.checkpoint.dcp`),
  with the sharding plan in the manifest. Loading reshards.

The LightningModule contract: the model to shard is the attribute named `module_attr`
(default "model"); everything else (task, metrics) is plain.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn

from unirec_dist.compat.lightning_api import SpawnWithoutWeightsHandBack
from unirec_dist.embeddings import sharding as S
from unirec_dist.errors import ConfigError
from unirec_dist.training.checkpointing import DCPCheckpointing

if TYPE_CHECKING:
    import lightning.pytorch as pl

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ShardingOptions:
    """What the strategy needs to plan and optimise tables (built from config/distributed.py)."""

    constraints: dict[str, str] = dataclasses.field(default_factory=dict)   # table -> sharding type
    table_optimizer: str = "adagrad"       # sgd | adagrad | rowwise_adagrad | adam (CUDA only)
    table_lr: float = 0.05
    table_eps: float = 1e-8
    table_weight_decay: float = 0.0
    memory_bytes: int | None = None        # per device for the planner (None: measured)
    batch_size: int | None = None          # per-rank batch size, a planner hint
    local_world_size: int | None = None    # workers sharing a node's memory (None: this launcher's)
    module_attr: str = "model"
    keep_init: bool = True                 # copy the model's own table init into the shards
    #: tables built on the meta device get `embeddings.sharding.fill_table_init` with this seed: a
    #: function of (seed, table, global row) only, so 1 and N workers start from the same weights
    init_seed: int = 0


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


class TorchRecStrategy(DCPCheckpointing, SpawnWithoutWeightsHandBack, DDPStrategy):
    strategy_name = "torchrec"

    def __init__(self, sharding: ShardingOptions | None = None, manifest: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sharding = sharding or ShardingOptions()
        #: extra manifest entries for every checkpoint (config, dataset, ...), set by the job
        self.manifest_extra: dict[str, Any] = dict(manifest or {})
        self.dmp: Any = None
        self.plan: Any = None
        self.plan_summary: dict[str, Any] | None = None
        self._dense: list[torch.nn.Parameter] = []
        #: numbers callbacks add to this rank's `worker_stats()` (e.g. throughput)
        self.extra_stats: dict[str, float] = {}

    @property
    def module_attr(self) -> str:  # type: ignore[override]
        return self.sharding.module_attr

    def fused_optimizer(self) -> Any:
        return self.dmp.fused_optimizer if self.dmp is not None and self.optimizers else None

    def plan_manifest(self) -> dict[str, Any] | None:
        return self.plan_summary

    # -- setup --------------------------------------------------------------------------------
    def setup(self, trainer: "pl.Trainer") -> None:
        assert self.accelerator is not None
        self.accelerator.setup(trainer)
        self.shard(trainer.lightning_module)
        self.barrier("torchrec-sharded")
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()

    def shard(self, lm: torch.nn.Module) -> None:
        """Plan, attach the fused optimizer and wrap `lm.<module_attr>` in DMP in place."""
        dist = _dist()
        if dist is None:
            raise RuntimeError("TorchRecStrategy needs an initialised process group")
        opts = self.sharding
        model = getattr(lm, opts.module_attr, None)
        if model is None:
            raise ConfigError(f"the LightningModule has no attribute {opts.module_attr!r} to shard")
        device = self.root_device
        dtype = device.type
        tables = S.find_tables(model)
        if not tables:
            raise ConfigError("the model has no TorchRec embedding tables to shard")
        constraints = S.make_constraints(tables, opts.constraints, dtype)
        S.apply_table_optimizer(model, opts.table_optimizer, opts.table_lr, opts.table_eps,
                                opts.table_weight_decay, device_type=dtype)
        # tables built on meta (the scalable path): DMP allocates only this rank's shards and they
        # get the deterministic init; tables built on CPU: their own init is copied into the shards
        tables_on_meta = _tables_on_meta(model)
        full = S.table_state(model) if opts.keep_init and not tables_on_meta else {}
        on_meta = any(p.device.type == "meta" for p in model.parameters())
        if not on_meta and dtype != "cpu":
            model.to(device)
        topo = S.make_topology(self.world_size, dtype, opts.memory_bytes, local_world_size=opts.local_world_size or self.num_processes)
        self.plan = S.plan_sharding(model, topo, constraints, S.make_sharders(dtype), opts.batch_size,
                                    pg=dist.group.WORLD)
        self.plan_summary = S.plan_summary(self.plan, tables, opts.table_optimizer)
        self.plan_summary["world_size"] = self.world_size
        self.plan_summary["device_type"] = dtype
        log.info("sharding plan: %s", S.format_plan(self.plan_summary))
        self.dmp = S.shard_model(model, device, self.plan, S.make_sharders(dtype), pg=dist.group.WORLD)
        if full:
            S.copy_into_shards(self.dmp, {k: v.to(device) for k, v in full.items()})
            del full
        elif tables_on_meta:
            S.init_tables(self.dmp, tables, opts.init_seed)
        self.tables = tables
        self.shard_stats = S.shard_stats(self.dmp, tables)
        log.info("local shards on rank %d: %s", self.global_rank, ", ".join(
            f"{n} {d['rows']}x{d['cols']} ({d['bytes'] / 2**20:.1f} MiB)" for n, d in sorted(self.shard_stats.items())))
        lm.to(device)   # dense parts and buffers (DMP placed the shards)
        # dense parameters and buffers: rank 0's copy everywhere (what DDP would do)
        self._dense = [p for n, p in _dense_named(lm)]
        for t in self._dense + [b for b in lm.buffers()]:
            if t.device.type != "meta" and not _is_sharded(t):
                dist.broadcast(t.data, src=0)

    def worker_stats(self) -> list[dict[str, Any]]:
        """Per rank (collective: every rank must call it): its process memory (VmRSS, VmHWM, from
        /proc) and its local table shards (rows, cols, bytes per table, from the sharded module)."""
        mine = {"rank": self.global_rank, "pid": os.getpid(), **process_memory(),
                **{k: v for k, v in self.extra_stats.items()},
                "tables": getattr(self, "shard_stats", None) or {}}
        dist = _dist()
        if dist is None or self.world_size == 1:
            return [mine]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, mine)
        return sorted(out, key=lambda d: d["rank"])

    def setup_optimizers(self, trainer: "pl.Trainer") -> None:
        """The LightningModule's optimizers, restricted to dense params (tables train fused)."""
        super().setup_optimizers(trainer)
        dense_ids = {id(p) for p in self._dense}
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["params"] = [p for p in group["params"] if id(p) in dense_ids]
            # drop state the optimizer may hold for removed params
            for p in list(opt.state):
                if id(p) not in dense_ids:
                    del opt.state[p]

    def model_to_device(self) -> None:
        pass  # DMP placed the model

    # -- steps --------------------------------------------------------------------------------
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        common_pad_width(args[0])
        return super().training_step(*args, **kwargs)

    # -- gradients ----------------------------------------------------------------------------
    def pre_backward(self, closure_loss: torch.Tensor) -> None:
        pass

    def post_backward(self, closure_loss: torch.Tensor) -> None:
        allreduce_dense_grads(self._dense)

def common_pad_width(batch: Any) -> None:
    """Pad every rank's training id grid to the same width (`batch.extra["pad_width"]`).

    A row-wise sharded pooled table (the content features' EmbeddingBagCollection) sends its
    output back with a variable reduce-scatter whose backward is an all_gather of per-rank
    (B * width, D) gradients; gloo's all_gather needs equal sizes, so ranks whose batches have
    different longest sequences would fail. One MAX all-reduce of a scalar per step makes the
    widths equal (NCCL would not need it; it is cheap enough to do always). The step's other
    per-rank-sized content lookups (distinct ids, negatives) are padded where they happen
    (`utils.dist.pad_to_ranks_max`).
    """
    from unirec_dist.utils.dist import max_over_ranks

    if not hasattr(batch, "seq"):
        return
    jt = batch.seq["item"]
    (width,) = max_over_ranks([int(jt.lengths().max()) if jt.lengths().numel() else 0])
    batch.extra["pad_width"] = width


def _tables_on_meta(model: torch.nn.Module) -> bool:
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

    return any(p.device.type == "meta" for m in model.modules()
               if isinstance(m, (EmbeddingBagCollection, EmbeddingCollection)) for p in m.parameters())


def process_memory() -> dict[str, float]:
    """This process's resident memory now and at its peak, MiB (Linux /proc; {} elsewhere), and,
    once it has used CUDA, its GPU memory peak (`gpu_peak_mib`: torch's allocator high-water mark
    on the current device, tables' shards and fused optimizer state included)."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, kib = line.split()[:2]
                    out["rss_mib" if key == "VmRSS:" else "hwm_mib"] = int(kib) / 1024
    except OSError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _is_sharded(t: torch.Tensor) -> bool:
    from unirec_dist.compat.torch_api import ShardedTensor

    return isinstance(t, ShardedTensor) or type(t).__name__ in ("TableBatchedEmbeddingSlice", "DTensor")


def _dense_named(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    return [(n, p) for n, p in in_backward_optimizer_filter(module.named_parameters()) if p.requires_grad]


def allreduce_dense_grads(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of replicated params over ranks, in one coalesced all-reduce."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return
    # a param without a grad on this rank (unused branch) contributes zeros, so every rank sends
    # the same layout
    flat_parts = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params
    ]
    if not flat_parts:
        return
    flat = torch.cat(flat_parts)
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    off = 0
    for p in params:
        n = p.numel()
        g = flat[off:off + n].view_as(p)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        off += n
