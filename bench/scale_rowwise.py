"""A 20M-row x 64 user-id table, row-wise sharded over 2 CPU workers with the real pretraining
path (`unirec_dist.training.pretrain.pretrain`: Ray Train, TorchRecStrategy, DMP, DCP): each
worker holds about half of the table. Prints per-worker memory (VmRSS and VmHWM at the end of
training, before the final checkpoint is written), each rank's local shard rows/bytes as the
sharded module reports them, and the same figures for 1 worker (the whole table on one rank).

    python bench/scale_rowwise.py [--rows 20000000] [--dim 64] [--steps 20] [--workers 2,1]
                                  [--work runs/bench/scale-rowwise] [--keep]

The dataset is a small synthetic log run through the real `prepare` (2,000 users, 300 items);
its manifest's user vocabulary is then set to `--rows` (user ids spread over the whole range by
a fixed permutation, so both shards see lookups). Nothing else is faked: the model (MF: the user
vector is the query, item-id table, sampled softmax) is built from the config, its tables on the
meta device, DMP allocates each rank's shards, the strategy gives them the deterministic init,
and the tables train with fused RowWiseAdagrad (one float of state per row; Adagrad would
double the table). The runs write real DCP checkpoints (a full copy of the table each, deleted
at the end unless --keep).

Baseline (the path before tables were built on meta): every rank built the whole table on CPU
and copied it once more to seed the shards, i.e. 2 full tables + its shard per rank.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "configs/pretrain/debug.yaml"
PRIME = 1_000_003     # coprime with any --rows that has no factor 1_000_003: a permutation of users


def make_dataset(work: Path, rows: int) -> Path:
    """Real `prepare` on a synthetic log, then a user vocabulary of `rows` (ids spread out)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from tests.synthetic import prepared_dataset

    ds = prepared_dataset(work / "ds", n_users=2000, n_items=300, n_events=40_000, seed=0)
    man = json.loads((ds / "manifest.json").read_text())
    if man["vocab_sizes"]["user"] == rows:
        return ds
    n_real = man["vocab_sizes"]["user"]
    for name in ("train.parquet", "valid.parquet", "test.parquet", "users.parquet"):
        if not (ds / name).is_file():
            continue
        t = pq.read_table(ds / name)
        u = t["user"].to_numpy().astype("int64")
        spread = 1 + ((u - 1) * PRIME) % (rows - 1)       # 1..rows-1, distinct for distinct users
        t = t.set_column(t.schema.get_field_index("user"), "user", pa.array(spread.astype("int32")))
        pq.write_table(t, ds / name)
    assert pc.max(pq.read_table(ds / "train.parquet")["user"]).as_py() < rows
    man["vocab_sizes"]["user"] = rows
    man["note"] = f"bench/scale_rowwise.py: user vocab set to {rows} (real users: {n_real - 1}, ids spread)"
    (ds / "manifest.json").write_text(json.dumps(man, indent=2))
    return ds


def run(ds: Path, out: Path, workers: int, rows: int, dim: int, steps: int) -> dict:
    from unirec_dist.config.distributed import load_pretrain_config
    from unirec_dist.training.pretrain import pretrain

    shutil.rmtree(out, ignore_errors=True)
    overrides = [
        f"data.path={ds}", f"trainer.out_dir={out}", "name=scale-rowwise",
        "data.batch_size=64", "data.max_len=20", f"trainer.max_steps={steps}", "trainer.max_epochs=1000", "trainer.limit_train_batches=1.0",
        "trainer.threads=1",
        f"model.embedding.dim={dim}", "model.embedding.user_id=true", "model.embedding.item_features=[]",
        "model.encoder={kind: mf}", "distributed.sharding.t_user=row_wise",
        "distributed.table_optimizer.kind=rowwise_adagrad", "distributed.checkpoint_every_n_steps=0",
    ]
    cfg = load_pretrain_config(CONFIG, overrides)
    t0 = time.perf_counter()
    final = pretrain(cfg, workers=workers, progress=False)
    secs = time.perf_counter() - t0
    summary = json.loads((out / "pretrain.json").read_text())
    ck_bytes = sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
    return {"workers": workers, "seconds": secs, "steps": summary["steps"], "stats": summary["worker_stats"],
            "plan": summary["plan"]["tables"]["t_user"], "checkpoint_bytes": ck_bytes}


def report(r: dict, rows: int, dim: int) -> None:
    table = rows * dim * 4
    print(f"\n{r['workers']} worker(s): t_user {rows:,} x {dim} fp32 = {table / 2**30:.2f} GiB, "
          f"{r['plan']['sharding_type']} over ranks {r['plan']['ranks']}; {r['steps']} steps in {r['seconds']:.0f} s "
          f"(Ray start, sharding, init, training, a {r['checkpoint_bytes'] / 2**30:.2f} GiB DCP checkpoint)")
    for w in r["stats"]:
        t = w["tables"]["t_user"]
        print(f"  rank {w['rank']}: shard rows {t['rows']:,} (from row {t['row_offset']:,}) = "
              f"{t['bytes'] / 2**30:.2f} GiB ({t['rows'] / rows:.1%} of the table); "
              f"VmRSS {w['rss_mib'] / 1024:.2f} GiB, VmHWM {w['hwm_mib'] / 1024:.2f} GiB")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workers", default="2,1", help="comma-separated worker counts, run in this order")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench" / "scale-rowwise"))
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    work = Path(a.work)
    ds = make_dataset(work, a.rows)
    results = []
    for n in [int(x) for x in a.workers.split(",") if x]:
        out = work / f"run-{n}w"
        try:
            r = run(ds, out, n, a.rows, a.dim, a.steps)
        finally:
            if not a.keep:
                shutil.rmtree(out, ignore_errors=True)
        report(r, a.rows, a.dim)
        results.append(r)
    table = a.rows * a.dim * 4
    by = {r["workers"]: r for r in results}
    if 1 in by and 2 in by:
        one = by[1]["stats"][0]["hwm_mib"]
        two = max(w["hwm_mib"] for w in by[2]["stats"])
        print(f"\npeak per worker: 1 worker {one / 1024:.2f} GiB, 2 workers {two / 1024:.2f} GiB "
              f"(ratio {two / one:.2f}; the table part halves, the ~fixed process overhead does not)")
    print(f"baseline (tables built on CPU, as before): each rank held the full table twice "
          f"(build + init copy) plus its shard: >= {2 * table / 2**30 + table / 2 / 2**30:.1f} GiB per rank at 2 workers")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
