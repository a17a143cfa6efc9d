"""Training ingestion at scale: per-worker memory of the streamed path does not grow with the log.

    python bench/scale_ingest.py [--sizes 10000000,100000000] [--workers 2] [--max-batches 400]
        [--dir DIR]

For each size (interactions), a seeded synthetic training split is written once under DIR
(default: $UNIREC_DATA or ~/.cache/unirec, then bench/scale_ingest/): users with heavy-tailed
history lengths (log-normal, 2..2,000 items), Zipf item popularity over users/10 items, as
`train/part-*.parquet` files of 1M users in row groups of 8,192 users (the layout prepare writes).
Then, each in its own subprocess (clean peak RSS), rank 0 of `--workers` iterates its share with
the real loader (training/data.py: ParquetSource + SequenceBatches, batch 128, max_len 200) for
`--max-batches` batches after reading the item counts (one streamed pass over every unit, as a
worker does at start), and prints peak RSS, batches/s and the ratio of peak RSS between sizes
(target: streamed within 1.15x between 10M and 100M). The in-memory path is run beside it at the
smallest size (and at larger ones with --memory-all) for comparison. The item-count pass is
what a worker makes for a dataset prepared before `prepare` wrote `item_counts.parquet`.

    python bench/scale_ingest.py --ray-data [--sizes 10000000] [--workers 2] [--max-batches 400]

The Ray Data arm beside ours, in the same Ray Train run shape: a TorchTrainer of `--workers`
CPU workers, each iterating `--max-batches` batches of 128 users into the same SeqBatch (KJT of
the last max_len + 1 items) from either (a) `ray.train.get_dataset_shard("train").iter_batches`
over `ray.data.read_parquet(train/)` (Ray Data's streaming split) or (b) our direct row-group
reads (ParquetSource + SequenceBatches with the worker's rank). Rank 0 reports its batches/s and
peak RSS (its own process: Ray Data's read tasks run in other worker processes, whose peak is
printed beside it as the local cluster's process-tree PSS peak).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PART_USERS = 1_000_000
ROW_GROUP = 8192


def default_dir() -> Path:
    """Under the data cache the fetchers use ($UNIREC_DATA, else $XDG_CACHE_HOME or ~/.cache, /unirec)."""
    from unirec_dist.data.movielens import data_dir

    return data_dir() / "bench" / "scale_ingest"


def generate(out: Path, interactions: int, seed: int = 0) -> Path:
    """Write the synthetic split (idempotent: reuses a complete earlier one)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = out / f"n{interactions}"
    if (d / "DONE").exists():
        return d
    (d / "train").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_users = max(interactions // 10, 1)
    n_items = max(n_users // 10, 100)
    ranks = np.arange(1, n_items + 1, dtype=np.float64)
    cdf = np.cumsum(ranks ** -1.05)
    cdf /= cdf[-1]
    written, user0, part = 0, 1, 0
    while written < interactions:
        u = min(PART_USERS, n_users - user0 + 1) if user0 <= n_users else PART_USERS
        lengths = np.clip(rng.lognormal(1.9, 0.9, u).astype(np.int64), 2, 2000)
        lengths = lengths[: max(1, int(np.searchsorted(np.cumsum(lengths), interactions - written)) + 1)]
        items = (np.searchsorted(cdf, rng.random(int(lengths.sum()))) + 1).astype(np.int32)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        users = np.arange(user0, user0 + len(lengths), dtype=np.int32)
        tbl = pa.table({"user": users, "items": pa.ListArray.from_arrays(pa.array(offsets), pa.array(items))})
        pq.write_table(tbl, d / "train" / f"part-{part:05d}.parquet", row_group_size=ROW_GROUP, use_dictionary=False)
        written += int(lengths.sum())
        user0 += len(lengths)
        part += 1
    (d / "meta.json").write_text(json.dumps({"interactions": written, "users": user0 - 1, "items": n_items}))
    (d / "DONE").write_text("")
    return d


def measure(path: str, mode: str, workers: int, max_batches: int) -> dict:
    from unirec_dist.training.data import ParquetSource, SequenceBatches

    meta = json.loads((Path(path) / "meta.json").read_text())
    t0 = time.perf_counter()
    src = ParquetSource(path, ingest=mode)
    counts = src.item_counts(meta["items"] + 1)
    counts_s = time.perf_counter() - t0
    sb = SequenceBatches(src, 128, 200, seed=0, rank=0, world_size=workers)
    import torch  # noqa: F401  (imports out of the timing)
    import torchrec  # noqa: F401

    t = time.perf_counter()
    n = 0
    for _ in sb:
        n += 1
        if n >= max_batches:
            break
    dt = time.perf_counter() - t
    return {"mode": mode, "interactions": meta["interactions"], "users": meta["users"], "batches": n,
            "batches_per_s": n / dt, "item_counts_s": counts_s, "count_total": int(counts.sum()),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def measure_ray_train(path: str, arm: str, workers: int, max_batches: int) -> dict:
    """One TorchTrainer run of `arm` ("ray_data" or "direct"); rank 0's figures."""
    import tempfile

    import ray
    import ray.data
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    def loop(config: dict) -> None:
        import logging
        import resource
        import time

        import numpy as np
        import ray.train

        from unirec_dist.training.data import ParquetSource, SequenceBatches, TrainSequences

        logging.getLogger().setLevel(logging.WARNING)
        import torchrec  # noqa: F401  (imports out of the timing)

        ctx = ray.train.get_context()
        n, t = 0, time.perf_counter()
        if config["arm"] == "ray_data":
            it = ray.train.get_dataset_shard("train").iter_batches(batch_size=128, batch_format="pyarrow")
            for b in it:
                seqs = TrainSequences.from_table(b).trainable()
                if len(seqs):
                    SequenceBatches(seqs, 128, 200, shuffle=False).make_batch(seqs, np.arange(len(seqs)))
                n += 1
                if n >= config["max_batches"]:
                    break
        else:
            sb = SequenceBatches(ParquetSource(config["path"], ingest="stream"), 128, 200, seed=0,
                                 rank=ctx.get_world_rank(), world_size=ctx.get_world_size())
            for _ in sb:
                n += 1
                if n >= config["max_batches"]:
                    break
        dt = time.perf_counter() - t
        if ctx.get_world_rank() == 0:   # (a file: Ray Train 2's Result keeps metrics only with a checkpoint)
            Path(config["out"]).write_text(json.dumps({
                "batches": n, "batches_per_s": n / dt,
                "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))

    ray.init(address="local", num_cpus=workers + 1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        datasets = {}
        if arm == "ray_data":
            ray.data.DataContext.get_current().enable_progress_bars = False
            datasets["train"] = ray.data.read_parquet(str(Path(path) / "train"), columns=["user", "items"])
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rank0.json"
            TorchTrainer(loop, train_loop_config={"arm": arm, "path": path, "max_batches": max_batches, "out": str(out)},
                         scaling_config=ScalingConfig(num_workers=workers, use_gpu=False),
                         torch_config=TorchConfig(backend="gloo"), datasets=datasets,
                         run_config=RunConfig(storage_path=tmp, name="ingest")).fit()
            r = json.loads(out.read_text())
        m = json.loads((Path(path) / "meta.json").read_text())
        return {"mode": arm, "interactions": m["interactions"], "users": m["users"], **r}
    finally:
        ray.shutdown()


def tree_peak(cmd: list[str]) -> tuple[str, float]:
    """Run cmd; (stdout, peak PSS of its process tree in GiB, sampled every 0.25 s)."""
    import threading

    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            try:
                ps = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                break
            tot = 0
            for q in ps:
                try:
                    tot += q.memory_full_info().pss
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], tot)
            time.sleep(0.25)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    th.join()
    if proc.returncode:
        raise SystemExit(f"{cmd[-6:]} failed (exit {proc.returncode})")
    return out, peak[0] / 2**30


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000000,100000000")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-batches", type=int, default=400)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--memory-all", action="store_true", help="run the in-memory path at every size")
    ap.add_argument("--ray-data", action="store_true", help="Ray Data streaming split vs direct reads, in Ray Train")
    ap.add_argument("--rounds", type=int, default=2, help="--ray-data: alternating rounds of the two arms")
    ap.add_argument("--measure", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.measure:
        fn = measure_ray_train if a.measure[1] in ("ray_data", "direct") else measure
        print(json.dumps(fn(a.measure[0], a.measure[1], a.workers, a.max_batches)))
        return 0
    out = Path(a.dir) if a.dir else default_dir()
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.ray_data:
        import os

        for size in sizes:
            d = generate(out, size)
            for arm in ("direct", "ray_data") * a.rounds:    # alternating: load drifts
                cmd = [sys.executable, __file__, "--measure", str(d), arm, "--workers", str(a.workers),
                       "--max-batches", str(a.max_batches)]
                load = os.getloadavg()[0]
                stdout, tree = tree_peak(cmd)
                r = json.loads(stdout.strip().splitlines()[-1])
                print(f"{size:,} {arm:>8}: rank 0 of {a.workers}, {r['batches']} batches at "
                      f"{r['batches_per_s']:,.1f}/s, rank 0 peak RSS {r['peak_rss_gib']:.2f} GiB, process tree "
                      f"peak {tree:.2f} GiB (load {load:.1f} at start)", flush=True)
        return 0
    rows = []
    for i, size in enumerate(sizes):
        t = time.perf_counter()
        d = generate(out, size)
        print(f"data {size:,} interactions: {d} ({time.perf_counter() - t:.0f} s)", flush=True)
        for mode in (["stream", "memory"] if (i == 0 or a.memory_all) else ["stream"]):
            cmd = [sys.executable, __file__, "--measure", str(d), mode, "--workers", str(a.workers),
                   "--max-batches", str(a.max_batches)]
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"  {mode:>6}: rank 0 of {a.workers}, {r['batches']} batches at {r['batches_per_s']:,.1f}/s; "
                  f"item-count pass {r['item_counts_s']:.1f} s; peak RSS {r['peak_rss_gib']:.2f} GiB", flush=True)
    stream = [r for r in rows if r["mode"] == "stream"]
    if len(stream) > 1:
        print(f"streamed peak RSS, {stream[-1]['interactions']:,} vs {stream[0]['interactions']:,} interactions: "
              f"{stream[-1]['peak_rss_gib'] / stream[0]['peak_rss_gib']:.2f}x (target <= 1.15x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
