"""The Ray Train side of the TorchRec strategy: what changes when Ray, not Lightning, starts the
workers.

`RayTorchRecStrategy` is `TorchRecStrategy` combined with Ray Train's `RayDDPStrategy`: Ray gives
the device and the ranks, and every rank writes its checkpoint files into its own folder
(`per_rank_dirs`: Ray merges the folders it is given by `ray.train.report`).
`flatten_worker_stats` turns the strategy's per-rank figures into the flat numeric metrics that
`ray.train.report` keeps. Imported only inside Ray Train workers (it imports ray.train.lightning).
"""
from __future__ import annotations

from typing import Any

from ray.train.lightning import RayDDPStrategy

from unirec_dist.training.strategy import TorchRecStrategy


class RayTorchRecStrategy(TorchRecStrategy, RayDDPStrategy):
    """TorchRecStrategy with Ray Train's device and rank discovery (see the module docstring)."""

    strategy_name = "ray_torchrec"
    per_rank_dirs = True


def flatten_worker_stats(stats: list[dict[str, Any]]) -> dict[str, float]:
    """`worker_stats()` as flat numeric metrics (what ray.train.report keeps reliably)."""
    out: dict[str, float] = {}
    for d in stats:
        r = d["rank"]
        for k, v in d.items():
            if isinstance(v, (int, float)) and k != "rank":
                out[f"worker/{r}/{k}"] = v
        for name, t in (d.get("tables") or {}).items():
            for k, v in t.items():
                out[f"worker/{r}/table/{name}/{k}"] = v
    return out
