"""Planner dry run (no training, nothing allocated): a 1B-row item table (+ a user table) over
64 GPU workers, 8 per host, 80 GiB HBM each. Prints the plan per table and per-device memory.

    python bench/planner_dry_run.py [--workers 64] [--rows 1000000000] [--dim 128] [--memory-gb 80]
"""
from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--local", type=int, default=8, help="GPUs per host")
    ap.add_argument("--rows", type=int, default=1_000_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--memory-gb", type=float, default=80.0)
    ap.add_argument("--optimizer", default="rowwise_adagrad")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("torchrec").setLevel(logging.ERROR)
    from unirec_dist.embeddings.sharding import dry_run_plan

    t0 = time.perf_counter()
    tables = [
        {"name": "t_item", "num_embeddings": a.rows, "embedding_dim": a.dim, "kind": "seq"},
        {"name": "t_user", "num_embeddings": 100_000_000, "embedding_dim": a.dim, "kind": "seq"},
        {"name": "t_category", "num_embeddings": 10_000, "embedding_dim": a.dim, "kind": "bag"},
    ]
    s = dry_run_plan(tables, a.workers, "cuda", int(a.memory_gb * 2**30), a.local, optimizer=a.optimizer)
    secs = time.perf_counter() - t0
    if a.json:
        print(json.dumps(s, indent=2))
        return
    print(f"plan for {a.workers} GPU workers ({a.local}/host, {a.memory_gb:.0f} GiB each), "
          f"optimizer {a.optimizer}, planned in {secs:.1f} s")
    for name, t in sorted(s["tables"].items()):
        rows = sum(sh["sizes"][0] for sh in t["shards"]) if t["shards"] else 0
        print(f"  {name}: {t['sharding_type']} over {len(t['ranks'])} ranks ({rows:,} rows)")
    w = s["weights_bytes_per_rank"]
    vals = sorted(w.values())
    print(f"  table weights per device: min {vals[0] / 2**30:.2f} GiB, max {vals[-1] / 2**30:.2f} GiB "
          f"(total {sum(vals) / 2**30:.1f} GiB over {len(vals)} devices)")
    total = a.rows * a.dim * 4
    print(f"  1B-row table alone: {total / 2**30:.1f} GiB fp32 -> {total / a.workers / 2**30:.2f} GiB per device if even")


if __name__ == "__main__":
    main()
