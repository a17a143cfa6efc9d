"""Sharding of embedding tables: topology, per-table constraints, planner, sharders, fused optimizer.

This module (with sharders.py) and `unirec_dist.training.strategy` are the only places that
import `torchrec.distributed`. Models stay plain single-device modules; here they are planned and wrapped
in DistributedModelParallel (DMP).

What runs where (measured with torch 2.13 CPU, torchrec 1.8, fbgemm-gpu-cpu 1.8):
    EmbeddingBagCollection (bag tables): table_wise, column_wise, table_column_wise,
        row_wise (the stock sharder offers row_wise only on CUDA; `CpuRowWiseEBCSharder` adds it
        on CPU, where it trains and checkpoints correctly)
    EmbeddingCollection (sequence tables): table_wise, row_wise, column_wise
    data_parallel: refused (see _BAG_TYPES); EC data_parallel also fails on CPU
Fused table optimizers: sgd, adagrad, rowwise_adagrad everywhere; adam only on CUDA.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from typing import TYPE_CHECKING, Any

from unirec_dist.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

SHARDING_TYPES = ("table_wise", "row_wise", "column_wise", "table_column_wise", "table_row_wise", "data_parallel")
TABLE_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "adam")

# data_parallel is left out on purpose: a replicated table is updated by its in-backward optimizer
# before any all-reduce can run (no DDP wrapper here), so replicas would drift apart. The planner
# never picks it and a constraint naming it is refused with a clear message.
_BAG_TYPES = {
    "cpu": ("table_wise", "column_wise", "table_column_wise", "row_wise"),
    "cuda": ("table_wise", "column_wise", "table_column_wise", "row_wise", "table_row_wise"),
}
_SEQ_TYPES = {
    "cpu": ("table_wise", "row_wise", "column_wise"),
    "cuda": ("table_wise", "row_wise", "column_wise"),
}
_OPTIMIZERS_BY_DEVICE = {
    "cpu": ("sgd", "adagrad", "rowwise_adagrad"),
    "cuda": TABLE_OPTIMIZERS,
}


@dataclasses.dataclass(frozen=True)
class TableInfo:
    """One embedding table found in a model."""

    name: str
    kind: str               # "bag" (EmbeddingBagCollection) or "seq" (EmbeddingCollection)
    num_embeddings: int
    embedding_dim: int
    module_path: str        # dotted path of the collection that owns it
    features: tuple[str, ...] = ()
    init_min: float | None = None   # the config's uniform init bounds (TorchRec's default when unset)
    init_max: float | None = None

    @property
    def bytes_fp32(self) -> int:
        return self.num_embeddings * self.embedding_dim * 4


def find_tables(module: "nn.Module") -> dict[str, TableInfo]:
    """All TorchRec tables in `module` (unsharded), by table name."""
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

    out: dict[str, TableInfo] = {}
    for path, m in module.named_modules():
        if isinstance(m, EmbeddingBagCollection):
            kind, cfgs = "bag", m.embedding_bag_configs()
        elif isinstance(m, EmbeddingCollection):
            kind, cfgs = "seq", m.embedding_configs()
        else:
            continue
        for c in cfgs:
            bound = (1.0 / c.num_embeddings) ** 0.5      # TorchRec's default uniform bound
            lo = c.weight_init_min if c.weight_init_min is not None else -bound
            hi = c.weight_init_max if c.weight_init_max is not None else bound
            out[c.name] = TableInfo(c.name, kind, c.num_embeddings, c.embedding_dim, path, tuple(c.feature_names),
                                    float(lo), float(hi))
    return out


def allowed_sharding_types(kind: str, device_type: str) -> tuple[str, ...]:
    dev = "cuda" if device_type == "cuda" else "cpu"
    return (_BAG_TYPES if kind == "bag" else _SEQ_TYPES)[dev]


def validate_sharding(constraints: dict[str, str], tables: dict[str, TableInfo], device_type: str) -> None:
    """Fail fast (before any worker starts) on a constraint the planner or device cannot honour."""
    for name, stype in constraints.items():
        if name not in tables:
            known = ", ".join(sorted(tables)) or "none"
            raise ConfigError(f"distributed.sharding: table {name!r} does not exist in the model (tables: {known})")
        if stype not in SHARDING_TYPES:
            raise ConfigError(
                f"distributed.sharding.{name}: unknown sharding type {stype!r}; expected one of {', '.join(SHARDING_TYPES)}"
            )
        ok = allowed_sharding_types(tables[name].kind, device_type)
        if stype == "data_parallel":
            raise ConfigError(
                f"distributed.sharding.{name}: data_parallel is not supported (replicated tables would drift "
                f"apart without a DDP wrapper); use one of {', '.join(ok)}"
            )
        if stype not in ok:
            what = "EmbeddingBagCollection" if tables[name].kind == "bag" else "EmbeddingCollection"
            raise ConfigError(
                f"distributed.sharding.{name}: {stype} is not supported for an {what} table on {device_type}; "
                f"use one of {', '.join(ok)}"
            )


def validate_table_optimizer(kind: str, device_type: str) -> None:
    ok = _OPTIMIZERS_BY_DEVICE["cuda" if device_type == "cuda" else "cpu"]
    if kind not in ok:
        raise ConfigError(
            f"optim.tables: {kind!r} is not supported on {device_type} for sharded tables "
            f"(fused table optimizers there: {', '.join(ok)})"
        )


def make_topology(
    world_size: int,
    device_type: str,
    memory_bytes: int | None = None,
    local_world_size: int | None = None,
) -> Any:
    """A planner Topology for the real world: `memory_bytes` per device (HBM on CUDA, DDR on CPU).

    Default memory: the GPU's total memory, or this host's RAM divided among its local workers.
    """
    from torchrec.distributed.planner.types import Topology

    local = local_world_size or world_size
    if memory_bytes is None:
        if device_type == "cuda":
            import torch

            memory_bytes = torch.cuda.get_device_properties(0).total_memory
        else:
            import psutil

            memory_bytes = psutil.virtual_memory().total // max(local, 1)
    if device_type == "cuda":
        return Topology(world_size=world_size, compute_device="cuda", hbm_cap=int(memory_bytes),
                        local_world_size=local)
    # On CPU the planner places weights in "HBM" of the compute device, which is host memory.
    return Topology(world_size=world_size, compute_device="cpu", hbm_cap=int(memory_bytes),
                    ddr_cap=int(memory_bytes), local_world_size=local)


def make_constraints(
    tables: dict[str, TableInfo], constraints: dict[str, str], device_type: str, cpu_bag_row_wise: bool = True
) -> dict[str, Any]:
    """ParameterConstraints per table: the configured type, else the device's allowed types.

    Every non-data-parallel table uses the `fused` kernel (the table optimizer runs in backward).
    """
    from torchrec.distributed.embedding_types import EmbeddingComputeKernel
    from torchrec.distributed.planner.types import ParameterConstraints

    validate_sharding(constraints, tables, device_type)
    out = {}
    for name, t in tables.items():
        if name in constraints:
            types = [constraints[name]]
        else:
            types = list(allowed_sharding_types(t.kind, device_type))
            if t.kind == "bag" and not cpu_bag_row_wise and device_type != "cuda":
                types.remove("row_wise")
        kernels = [EmbeddingComputeKernel.FUSED.value]
        out[name] = ParameterConstraints(sharding_types=types, compute_kernels=kernels)
    return out


def make_sharders(device_type: str) -> list[Any]:
    """EBC/EC sharders; on CPU the EBC sharder also offers row_wise."""
    from torchrec.distributed.embedding import EmbeddingCollectionSharder

    from unirec_dist.embeddings.sharders import CpuRowWiseEBCSharder

    return [CpuRowWiseEBCSharder(), EmbeddingCollectionSharder()]


def apply_table_optimizer(module: "nn.Module", kind: str, lr: float, eps: float = 1e-8,
                          weight_decay: float = 0.0, device_type: str = "cpu") -> None:
    """Attach the fused optimizer to every embedding table (it then runs inside backward).

    Without this, sharded tables silently train with fused SGD at lr 0.01.
    """
    import torch
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
    from torchrec.optim import RowWiseAdagrad

    from unirec_dist.compat.torch_api import apply_optimizer_in_backward

    validate_table_optimizer(kind, device_type)
    if kind == "sgd":
        cls, kw = torch.optim.SGD, {"lr": lr, "weight_decay": weight_decay}
    elif kind == "adagrad":
        cls, kw = torch.optim.Adagrad, {"lr": lr, "eps": eps, "weight_decay": weight_decay}
    elif kind == "rowwise_adagrad":
        cls, kw = RowWiseAdagrad, {"lr": lr, "eps": eps, "weight_decay": weight_decay}
    else:
        cls, kw = torch.optim.Adam, {"lr": lr, "eps": eps, "weight_decay": weight_decay}
    for m in module.modules():
        if isinstance(m, (EmbeddingBagCollection, EmbeddingCollection)):
            apply_optimizer_in_backward(cls, m.parameters(), kw)


def plan_sharding(
    module: "nn.Module",
    topology: Any,
    constraints: dict[str, Any],
    sharders: list[Any],
    batch_size: int | None = None,
    pg: Any = None,
) -> Any:
    """Plan with the TorchRec planner. With a process group, rank 0 plans and broadcasts."""
    from torchrec.distributed.planner import EmbeddingShardingPlanner
    from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation

    planner = EmbeddingShardingPlanner(
        topology=topology,
        batch_size=batch_size,
        constraints=constraints,
        storage_reservation=FixedPercentageStorageReservation(0.1),
        debug=False,
    )
    from torchrec.distributed.planner.types import PlannerError

    try:
        if pg is not None:
            return planner.collective_plan(module, sharders, pg)
        return planner.plan(module, sharders)
    except PlannerError as e:
        raise ConfigError(planner_error_line(str(e), topology.world_size)) from None


def _storage_bytes(storage: str) -> float:
    """Bytes of the largest tier of a planner `Storage(hbm = X GB, ddr = Y GB)` (GB: 2**30 bytes,
    rounded to 3 decimals) or `Storage(hbm=X, ddr=Y, ...)` (bytes) repr."""
    vals = [float(v) for v in re.findall(r"(?:hbm|ddr)\s*=\s*([0-9.]+)", storage)]
    big = max(vals, default=0.0)
    return big * 2**30 if " GB" in storage else big


def _human(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def planner_error_line(text: str, world_size: int) -> str:
    """The planner's no-plan error (a wall of text) as one line with its own estimate: bytes
    the tables need (weights + fused optimizer state) against bytes the workers have.

    TorchRec's PlannerError carries those figures only in its message, so they are read from it;
    an error without them keeps its first line."""
    first = text.strip().splitlines()[0].strip() if text.strip() else "PlannerError"
    need = re.search(r"Global storage requirement for model parallel: (Storage\([^)]*\))", text)
    have = re.search(r"Global storage available for model parallel: (Storage\([^)]*\))", text)
    if not (need and have):
        return f"sharding planner found no feasible plan: {first}"
    line = (f"the embedding tables do not fit on {world_size} worker(s): they need {_human(_storage_bytes(need.group(1)))} "
            f"(weights + fused optimizer state, the sharding planner's estimate) but the workers have "
            f"{_human(_storage_bytes(have.group(1)))} for them")
    shard = re.search(r"Shard of size (Storage\([^)]*\)) bytes does not fit on any rank\. "
                      r"Device memory cap: (Storage\([^)]*\))", text)
    if shard:
        line += (f" (a {_human(_storage_bytes(shard.group(1)))} shard finds at most "
                 f"{_human(_storage_bytes(shard.group(2)))} free on a worker)")
    return line + "; use more workers, a sharding that splits the big tables (row_wise), or distributed.memory_gb"


def plan_summary(plan: Any, tables: dict[str, TableInfo], optimizer: str | None = None) -> dict[str, Any]:
    """JSON-able view of a ShardingPlan: per table its type, kernel and shards (rank, offsets, sizes).

    Also per-rank bytes of weights (fp32) and of fused optimizer state, as the planner placed them.
    """
    per_rank: dict[int, int] = {}
    out_tables: dict[str, Any] = {}
    for module_path, module_plan in plan.plan.items():
        for name, ps in module_plan.items():
            shards = []
            if ps.sharding_spec is not None:
                for sm in ps.sharding_spec.shards:
                    rank = sm.placement.rank()
                    rows, cols = sm.shard_sizes
                    shards.append({"rank": rank, "offsets": list(sm.shard_offsets), "sizes": [rows, cols]})
                    per_rank[rank] = per_rank.get(rank, 0) + rows * cols * 4
            ranks = sorted({s["rank"] for s in shards}) if shards else list(ps.ranks or [])
            if not shards:  # data_parallel: a full replica on every rank
                t = tables.get(name)
                for r in ranks:
                    per_rank[r] = per_rank.get(r, 0) + (t.bytes_fp32 if t else 0)
            out_tables[name] = {
                "module": module_path,
                "sharding_type": ps.sharding_type,
                "compute_kernel": ps.compute_kernel,
                "ranks": ranks,
                "shards": shards,
            }
    opt_factor = {"sgd": 0.0, "adagrad": 1.0, "adam": 2.0}.get(optimizer or "", 0.0)
    summary: dict[str, Any] = {
        "tables": out_tables,
        "weights_bytes_per_rank": {str(r): b for r, b in sorted(per_rank.items())},
    }
    if optimizer:
        summary["optimizer"] = optimizer
        # rowwise_adagrad keeps one float per row: small, counted as weights/dim
        summary["optimizer_state_bytes_per_rank"] = {
            str(r): int(b * opt_factor) for r, b in sorted(per_rank.items())
        }
    return summary


def format_plan(summary: dict[str, Any]) -> str:
    """One line per table, for the log."""
    lines = []
    for name, t in sorted(summary["tables"].items()):
        lines.append(f"{name}: {t['sharding_type']} ({t['compute_kernel']}) on ranks {t['ranks']}")
    mem = ", ".join(f"rank {r}: {b / 2**20:.1f} MiB" for r, b in summary["weights_bytes_per_rank"].items())
    lines.append(f"table weights per rank: {mem}")
    return "; ".join(lines)


def shard_model(
    module: "nn.Module",
    device: "torch.device",
    plan: Any,
    sharders: list[Any],
    pg: Any = None,
) -> Any:
    """Wrap `module` (built on meta or CPU) in DMP with `plan`.

    No dense DDP wrapper: dense gradients are all-reduced by the strategy (see
    `training.strategy.allreduce_dense_grads`), which lets the LightningModule call any method of
    the model (not only forward) and keeps one code path for world size 1 and N.
    """
    from torchrec.distributed.model_parallel import DistributedModelParallel

    return DistributedModelParallel(
        module=module,
        device=device,
        plan=plan,
        sharders=sharders,
        env=None if pg is None else _env(pg),
        init_data_parallel=False,
    )


def _env(pg: Any) -> Any:
    from torchrec.distributed.types import ShardingEnv

    return ShardingEnv.from_process_group(pg)


def dry_run_plan(
    tables: list[dict[str, Any]],
    world_size: int,
    device_type: str = "cuda",
    memory_bytes: int = 80 * 2**30,
    local_world_size: int = 8,
    constraints: dict[str, str] | None = None,
    optimizer: str = "rowwise_adagrad",
    batch_size: int = 512,
) -> dict[str, Any]:
    """Plan tables for a cluster that is not here (no process group, no memory allocated).

    `tables`: [{"name", "num_embeddings", "embedding_dim", "kind": "bag"|"seq"}]. The model is
    built on the meta device, so a 1B-row table costs nothing.
    """
    import torch
    from torch import nn
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

    bag = [EmbeddingBagConfig(name=t["name"], num_embeddings=int(t["num_embeddings"]),
                              embedding_dim=int(t["embedding_dim"]), feature_names=[t["name"]])
           for t in tables if t.get("kind", "bag") == "bag"]
    seq = [EmbeddingConfig(name=t["name"], num_embeddings=int(t["num_embeddings"]),
                           embedding_dim=int(t["embedding_dim"]), feature_names=[t["name"]])
           for t in tables if t.get("kind", "bag") == "seq"]
    model = nn.Module()
    meta = torch.device("meta")
    if bag:
        model.bags = EmbeddingBagCollection(tables=bag, device=meta)
    if seq:
        model.seqs = EmbeddingCollection(tables=seq, device=meta)
    apply_table_optimizer(model, optimizer, lr=0.01, device_type=device_type)
    found = find_tables(model)
    topo = make_topology(world_size, device_type, memory_bytes, local_world_size)
    cons = make_constraints(found, constraints or {}, device_type)
    plan = plan_sharding(model, topo, cons, make_sharders(device_type), batch_size=batch_size)
    summary = plan_summary(plan, found, optimizer)
    summary["world_size"] = world_size
    summary["device_type"] = device_type
    summary["memory_bytes_per_device"] = memory_bytes
    return summary


def table_state(module: "nn.Module") -> dict[str, "torch.Tensor"]:
    """Copies of the embedding-table weights of an unsharded module (skipped when on meta)."""
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

    out = {}
    for path, m in module.named_modules():
        if isinstance(m, (EmbeddingBagCollection, EmbeddingCollection)):
            for k, v in m.state_dict().items():
                if v.device.type != "meta":
                    out[f"{path}.{k}" if path else k] = v.detach().clone()
    return out


def copy_into_shards(dmp: "nn.Module", full: dict[str, "torch.Tensor"]) -> int:
    """Copy full (unsharded) table weights into this rank's shards; returns tensors copied.

    DMP re-initialises sharded tables; this keeps a model's own initialisation, so that N workers
    and 1 process start from the same weights (parity) when the model was built on CPU.
    """
    import torch

    from unirec_dist.compat.torch_api import ShardedTensor

    n = 0
    sd = dmp.state_dict()
    with torch.no_grad():
        for key, src in full.items():
            dst = sd.get(key)
            if dst is None:
                continue
            if isinstance(dst, ShardedTensor):
                for shard in dst.local_shards():
                    off, size = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    sl = tuple(slice(o, o + s) for o, s in zip(off, size))
                    shard.tensor.copy_(src[sl])
            elif hasattr(dst, "to_local"):  # DTensor
                from torch.distributed.tensor import distribute_tensor

                dst.to_local().copy_(distribute_tensor(src.to(dst.device), dst.device_mesh, dst.placements).to_local())
            else:
                dst.copy_(src)
            n += 1
    return n


# -- deterministic table init ------------------------------------------------------------------
#: rows per init block. Part of the init's definition: changing it changes every table's start.
INIT_BLOCK_ROWS = 16384


def _block_seed(seed: int, table: str, block: int) -> int:
    h = hashlib.blake2b(f"unirec/{seed}/{table}/{block}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def fill_table_init(dst: "torch.Tensor", table: TableInfo, seed: int, row0: int = 0, col0: int = 0) -> None:
    """Write rows [row0, row0 + dst.shape[0]) x cols [col0, col0 + dst.shape[1]) of `table`'s
    deterministic init into `dst` (any device/dtype).

    The init is uniform(init_min, init_max), drawn per block of INIT_BLOCK_ROWS global rows from a
    generator seeded by (seed, table name, block index): a value depends on (seed, table, global
    row, column) only, never on how the table is sharded, so every rank fills its own shards
    without materialising the table and 1 and N workers start from the same weights. Cost: the
    blocks that overlap the shard (full table width), one block at a time.
    """
    import torch

    rows, cols = int(dst.shape[0]), int(dst.shape[1])
    if rows == 0 or cols == 0:
        return
    n, dim, B = table.num_embeddings, table.embedding_dim, INIT_BLOCK_ROWS
    lo = table.init_min if table.init_min is not None else -(1.0 / n) ** 0.5
    hi = table.init_max if table.init_max is not None else (1.0 / n) ** 0.5
    if row0 < 0 or row0 + rows > n or col0 < 0 or col0 + cols > dim:
        raise ValueError(f"{table.name}: rows {row0}+{rows} x cols {col0}+{cols} outside {n} x {dim}")
    g = torch.Generator()
    with torch.no_grad():
        for b in range(row0 // B, (row0 + rows - 1) // B + 1):
            start = b * B
            size = min(B, n - start)
            g.manual_seed(_block_seed(seed, table.name, b))
            blk = torch.empty(size, dim).uniform_(lo, hi, generator=g)
            s, e = max(row0, start), min(row0 + rows, start + size)
            dst[s - row0:e - row0].copy_(blk[s - start:e - start, col0:col0 + cols])


def _table_keys(tables: dict[str, TableInfo]) -> dict[str, TableInfo]:
    """state_dict key of each table's weight -> table."""
    out = {}
    for t in tables.values():
        sub = "embeddings" if t.kind == "seq" else "embedding_bags"
        prefix = f"{t.module_path}." if t.module_path else ""
        out[f"{prefix}{sub}.{t.name}.weight"] = t
    return out


def local_table_shards(module: "nn.Module", tables: dict[str, TableInfo]) -> list[tuple[TableInfo, "torch.Tensor", int, int]]:
    """This rank's pieces of every table: (table, tensor (rows, cols), global row offset, col offset).

    Works on a DMP-wrapped module (ShardedTensor or DTensor weights) and on a plain one.
    """
    from unirec_dist.compat.torch_api import ShardedTensor, dtensor_global_offset

    out = []
    sd = module.state_dict()
    for key, t in _table_keys(tables).items():
        w = sd.get(key)
        if w is None:
            raise KeyError(f"table {t.name}: no state_dict entry {key!r}")
        if isinstance(w, ShardedTensor):
            for shard in w.local_shards():
                off = shard.metadata.shard_offsets
                out.append((t, shard.tensor, int(off[0]), int(off[1])))
        elif hasattr(w, "to_local"):    # DTensor
            off = dtensor_global_offset(w)
            out.append((t, w.to_local(), int(off[0]), int(off[1])))
        elif w.device.type != "meta":
            out.append((t, w, 0, 0))
    return out


def init_tables(module: "nn.Module", tables: dict[str, TableInfo], seed: int) -> dict[str, int]:
    """Fill this rank's shards (or a plain module's full tables) with the deterministic init
    (`fill_table_init`); returns rows written per table."""
    rows: dict[str, int] = {}
    for t, tensor, r0, c0 in local_table_shards(module, tables):
        fill_table_init(tensor, t, seed, r0, c0)
        rows[t.name] = rows.get(t.name, 0) + int(tensor.shape[0])
    return rows


def shard_stats(module: "nn.Module", tables: dict[str, TableInfo]) -> dict[str, dict[str, int]]:
    """Rows, columns and bytes of this rank's local pieces of each table (from the sharded module)."""
    out: dict[str, dict[str, int]] = {}
    for t, tensor, r0, c0 in local_table_shards(module, tables):
        d = out.setdefault(t.name, {"rows": 0, "cols": 0, "bytes": 0, "row_offset": r0})
        d["rows"] += int(tensor.shape[0])
        d["cols"] = max(d["cols"], int(tensor.shape[1]))
        d["bytes"] += int(tensor.numel() * tensor.element_size())
    return out
