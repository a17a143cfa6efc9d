"""Sharded evaluation at catalogue scale: `--users` test queries ranked against `--items` items,
the checkpoint's item table row-wise sharded over `--workers` Ray workers
(`unirec_dist.training.distributed_eval.evaluate_sharded`, what `unirec evaluate --workers N`
runs), and the same evaluation in one process (`--one-process`, only when memory allows: it holds
the whole table). Prints per-worker peak memory (VmHWM), load and scoring wall time, the metrics,
and whether the 1-process metrics are identical.

    python bench/sharded_eval.py [--items 20000000] [--users 10000] [--dim 32] [--workers 2]
                                 [--k 10] [--one-process] [--work runs/bench/sharded-eval] [--keep]

The dataset is a synthetic log run through the real `prepare` (`--users` users, 300 items); its
manifest's item vocabulary is then set to `--items` (item ids spread over the whole range by a
fixed permutation, so every worker's rows hold targets). The checkpoint is the debug config's
SASRec (id embeddings only) built with random tables and saved through the normal checkpoint
path (`checkpoint.dcp.save_checkpoint`, manifest and hashes included), in a child process that
exits before the evaluation starts. No training: the figures are memory and time, not quality.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "configs/pretrain/debug.yaml"
PRIME = 1_000_003     # coprime with --items unless it is a multiple: a permutation of item ids


def make_dataset(work: Path, items: int, users: int) -> Path:
    """Real `prepare` on a synthetic log, then an item vocabulary of `items` (ids spread out)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from tests.synthetic import prepared_dataset

    ds = prepared_dataset(work / "ds", n_users=users, n_items=300, n_events=users * 20, seed=0)
    man = json.loads((ds / "manifest.json").read_text())
    if man["vocab_sizes"]["item"] == items + 1:
        return ds

    def spread(a: pa.Array) -> pa.Array:
        v = a.to_numpy(zero_copy_only=False).astype("int64")
        return pa.array((1 + ((v - 1) * PRIME) % items).astype("int32"))

    for name in ("train.parquet", "valid.parquet", "test.parquet", "interactions.parquet"):
        if not (ds / name).is_file():
            continue
        t = pq.read_table(ds / name)
        for col in ("history", "targets", "items"):
            if col in t.column_names:
                c = t[col].combine_chunks()
                t = t.set_column(t.schema.get_field_index(col), col,
                                 pa.ListArray.from_arrays(c.offsets, spread(pc.list_flatten(c))))
        if "item" in t.column_names:
            t = t.set_column(t.schema.get_field_index("item"), "item", spread(t["item"].combine_chunks()))
        pq.write_table(t, ds / name)
    man["vocab_sizes"]["item"] = items + 1
    (ds / "manifest.json").write_text(json.dumps(man, indent=2))
    return ds


def overrides(ds: Path, dim: int) -> list[str]:
    return [f"data.path={ds}", f"model.embedding.dim={dim}", "model.embedding.item_features=[]"]


def _save_checkpoint(ds: str, dim: int, out: str) -> None:
    """Child process: the model with random tables, saved as a real checkpoint."""
    from unirec_dist.checkpoint.dcp import save_checkpoint
    from unirec_dist.config.loader import load_config, to_dict
    from unirec_dist.config.train import TrainConfig
    from unirec_dist.models.factory import MODEL_KEY, build_from_config, dataset_section

    cfg = load_config(TrainConfig, CONFIG, overrides(Path(ds), dim))
    man = json.loads((Path(ds) / "manifest.json").read_text())
    model = build_from_config(cfg, man)
    save_checkpoint(Path(out), {MODEL_KEY: model.state_dict()},
                    {"kind": "train", "step": 0, "epoch": 0, "config": to_dict(cfg), "dataset": dataset_section(ds, man)})


def _one_process(ckpt: str, ds: str, k: int, q: mp.Queue) -> None:
    """Child process: `unirec evaluate` without --workers (the whole table in this process)."""
    from unirec_dist.data.dataset import PreparedDataset
    from unirec_dist.metrics.evaluate import evaluate
    from unirec_dist.models.factory import load_retriever
    from unirec_dist.training.strategy import process_memory

    t0 = time.perf_counter()
    model, _ = load_retriever(ckpt)
    t1 = time.perf_counter()
    report = evaluate(model, PreparedDataset.open(ds), "test", ks=(k,), mask_seen=True, progress=False)
    q.put({"metrics": report["metrics"], "load_s": t1 - t0, "score_s": time.perf_counter() - t1, **process_memory()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=20_000_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--one-process", action="store_true", help="also evaluate in one process (holds the whole table)")
    ap.add_argument("--work", default="runs/bench/sharded-eval")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint and dataset")
    args = ap.parse_args()
    work = Path(args.work).resolve() / f"items{args.items}-users{args.users}-dim{args.dim}"
    ds = make_dataset(work, args.items, args.users)
    ckpt = work / "ckpt"
    ctx = mp.get_context("spawn")
    if not (ckpt / "manifest.json").is_file():
        t0 = time.perf_counter()
        p = ctx.Process(target=_save_checkpoint, args=(str(ds), args.dim, str(ckpt)))
        p.start()
        p.join()
        if p.exitcode != 0:
            raise SystemExit("checkpoint creation failed")
        print(f"checkpoint {ckpt}: {args.items:,} x {args.dim} item table saved in {time.perf_counter() - t0:.1f} s")
    table_mib = (args.items + 1) * args.dim * 4 / 2**20
    print(f"item table {table_mib:,.0f} MiB (fp32); {args.users:,} queries, K={args.k}, seen items masked")

    from unirec_dist.training.distributed_eval import evaluate_sharded

    t0 = time.perf_counter()
    report = evaluate_sharded(ckpt, ds, args.workers, ks=[args.k], mask_seen=True)
    wall = time.perf_counter() - t0
    print(f"{args.workers} workers: {wall:.1f} s end to end (Ray start included); metrics {report['metrics']}")
    for w in report["workers"]:
        item = w["tables"]["t_item"]
        print(f"  worker {w['rank']}: peak {w['hwm_mib']:,.0f} MiB, item rows {item['rows']:,} "
              f"({item['bytes'] / 2**20:,.0f} MiB), load {w['load_s']:.1f} s, scoring {w['score_s']:.1f} s")
    if args.one_process:
        q = ctx.Queue()
        p = ctx.Process(target=_one_process, args=(str(ckpt), str(ds), args.k, q))
        p.start()
        one = q.get()
        p.join()
        print(f"1 process: peak {one['hwm_mib']:,.0f} MiB, load {one['load_s']:.1f} s, scoring {one['score_s']:.1f} s; "
              f"metrics identical: {one['metrics'] == report['metrics']}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
