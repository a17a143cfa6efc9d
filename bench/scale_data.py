"""`prepare --engine ray` at scale: wall time, driver peak RSS and the whole process tree's peak.

    python bench/scale_data.py [--sizes 1000000,10000000] [--dir DIR] [--arrow-sizes SIZE,...]
        [--stages prepare,pretrain] [--pretrain-steps 40] [--arrow-max-gb 16]

For each size (interactions), a seeded synthetic log is written once under DIR (default:
$UNIREC_DATA or ~/.cache/unirec, then bench/scale_data/) as Parquet part files
`interactions/part-NNNNN.parquet` of 1M rows, with a realistic shape:
  users    ~size / 9.3, heavy-tailed activity (log-normal events per user, 1..5,000), raw ids sparse;
  items    size / 100, Zipf popularity (exponent 1.05), raw ids sparse;
  time     per user, a random start and exponential gaps (mean 1 h), 5% of gaps zero (ties);
  ratings  1..5; 1% of rows repeated exactly (duplicates); rows shuffled within each part.
Then each arm runs `prepare` (min_rating 3.5, 5-core, leave-one-out) in its own subprocess and
prints one line: wall time, driver peak RSS (the arm process's VmHWM: for `ray`, the driver;
Ray's workers, raylet and object store are separate processes) and the process tree's peak
memory (the arm process and every descendant, i.e. Ray's local cluster, sampled every 0.25 s as
the sum of PSS: shared object-store pages counted once; a peak between samples can be missed).
The Arrow engine runs at --arrow-sizes (default: the smallest size) for comparison; both engines'
datasets are compared row for row where both ran (`same content`, in chunks of 1M rows). The Arrow arm is stopped when
its process tree passes --arrow-max-gb (default 16) of PSS: the line then says where it stood.

Then (stage `pretrain`, skipped with --stages prepare) `unirec pretrain --workers 2` on each
size's Ray-prepared dataset, `--pretrain-steps` steps (default 40) with the SASRec config of
configs/pretrain/ml-1m-sasrec.yaml (1 thread per worker, the item table row-wise sharded, no
checkpoint but the final one), once with `data.ingest=stream` and once with `data.ingest=memory`
(the same batches: tests/unit/test_ingest.py), each in its own subprocess. Per arm: the workers'
peak RSS (VmHWM, from pretrain.json), the item table's share of it (the shard's bytes x 2:
weights + the fused Adagrad state), positions/s (all workers' target positions over the slowest
worker's time after 3 warm-up steps) and the process tree's peak PSS; then, per size, streaming's
positions/s over in-memory's and, between the first and last size, the ratio of the streamed
workers' peak RSS. `--stages pretrain` reuses the prepared datasets of an earlier run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PART_ROWS = 1_000_000


def default_dir() -> Path:
    """Under the data cache the fetchers use ($UNIREC_DATA, else $XDG_CACHE_HOME or ~/.cache, /unirec)."""
    from unirec_dist.data.movielens import data_dir

    return data_dir() / "bench" / "scale_data"


def generate(out: Path, interactions: int, seed: int = 0) -> Path:
    """Write the synthetic log (idempotent: reuses a complete earlier one); returns its folder."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = out / f"n{interactions}"
    if (d / "DONE").exists():
        return d
    (d / "interactions").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_users = max(interactions // 10, 10)
    n_items = max(interactions // 100, 100)
    cdf = np.cumsum(np.arange(1, n_items + 1, dtype=np.float64) ** -1.05)
    cdf /= cdf[-1]
    n_unique = int(interactions / 1.01)
    # candidates enough for the total (mean ~9.3 events a user), cut where the events run out
    lengths = np.clip(rng.lognormal(1.6, 1.1, 2 * n_users).astype(np.int64), 1, 5000)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), n_unique)) + 1]
    lengths[-1] -= int(lengths.sum()) - n_unique
    users = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    user_ids = 1_000_003 + 7 * rng.permutation(len(lengths)).astype(np.int64)
    items = np.searchsorted(cdf, rng.random(n_unique)).astype(np.int64)
    gaps = np.floor(rng.exponential(3600.0, n_unique)).astype(np.int64) * (rng.random(n_unique) > 0.05)
    starts = np.repeat(rng.integers(1_300_000_000, 1_600_000_000, len(lengths)), lengths)
    first = np.r_[0, np.cumsum(lengths)[:-1]]
    csum = np.cumsum(gaps)
    ts = starts + csum - np.repeat(csum[first], lengths)
    rating = rng.integers(1, 6, n_unique).astype(np.float32)
    dup = rng.integers(0, n_unique, interactions - n_unique)
    cols = {"user_id": user_ids[users], "item_id": 500_001 + 3 * items, "ts": ts, "rating": rating}
    cols = {k: np.concatenate([v, v[dup]]) for k, v in cols.items()}
    order = rng.permutation(interactions)          # parts hold random rows; each part is shuffled
    for k, a in enumerate(range(0, interactions, PART_ROWS)):
        rows = order[a: a + PART_ROWS]
        pq.write_table(pa.table({c: v[rows] for c, v in cols.items()}), d / "interactions" / f"part-{k:05d}.parquet")
    (d / "DONE").write_text(json.dumps({"interactions": interactions, "users": int(len(lengths)),
                                        "items": n_items, "duplicates": int(len(dup))}))
    return d


def config(data: Path):
    from unirec_dist.config.dataset import DatasetConfig
    from unirec_dist.config.loader import load_config

    return load_config(DatasetConfig, None, [
        f"name=scale-{data.name}", f"source.interactions={data / 'interactions'}", "columns.user=user_id",
        "columns.item=item_id", "columns.timestamp=ts", "columns.rating=rating", "filter.min_rating=3.5",
        "filter.user_core=5", "filter.item_core=5"])


def peak_rss_bytes() -> int:
    """This process's peak RSS (VmHWM: the process image's own, not a forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_arm(engine: str, data: str, out: str) -> None:
    """Child process: prepare with `engine`, print one JSON line."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from unirec_dist.data.prepare import prepare

    cfg = config(Path(data))
    t0 = time.perf_counter()
    prepare(cfg, out, overwrite=True, engine=engine)
    wall = time.perf_counter() - t0
    print(json.dumps({"wall_s": wall, "driver_peak_gb": peak_rss_bytes() / 1e9}), flush=True)


PRETRAIN_CONFIG = ROOT / "configs/pretrain/ml-1m-sasrec.yaml"


def run_pretrain_arm(data: str, out: str, ingest: str, steps: int) -> None:
    """Child process: `unirec pretrain --workers 2` for `steps` steps, print one JSON line."""
    import logging
    import shutil
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    from unirec_dist.config.distributed import load_pretrain_config
    from unirec_dist.training.pretrain import pretrain

    shutil.rmtree(out, ignore_errors=True)
    cfg = load_pretrain_config(PRETRAIN_CONFIG, [
        f"data.path={data}", f"trainer.out_dir={out}", f"trainer.max_steps={steps}", "trainer.max_epochs=1000",
        # no validation: full ranking of every valid user at the epoch end max_steps cuts (hours at 100M)
        "trainer.threads=1", "trainer.val_every_n_epochs=1000", "distributed.checkpoint_every_n_steps=0",
        "distributed.sharding.t_item=row_wise",
        f"data.ingest={ingest}"])
    t0 = time.perf_counter()
    pretrain(cfg, workers=2, progress=False)
    job = time.perf_counter() - t0
    summary = Path(out) / "pretrain.json"
    stats = json.loads(summary.read_text())["worker_stats"]
    shutil.copyfile(summary, f"{out}.json")   # kept: per-worker rss/hwm and table shard bytes
    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({
        "job_s": job, "timed_steps": stats[0]["timed_steps"],
        "positions_per_s": sum(w["positions"] for w in stats) / max(w["train_s"] for w in stats),
        "worker_peak_gb": [w["hwm_mib"] * 2**20 / 1e9 for w in stats],
        "table_gb": [2 * sum(t.get("bytes", 0) for t in w.get("tables", {}).values()) / 1e9 for w in stats],
    }), flush=True)


def tree_pss(pid: int) -> int:
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def measure(arm: list[str], max_gb: float | None = None) -> dict:
    """Run `arm` (this script's hidden arm flags) in a subprocess, sampling its process tree's
    PSS; with `max_gb`, the tree is killed once it passes that many GB (then {"stopped": ...})."""
    import psutil

    cmd = [sys.executable, __file__, *arm]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            start_new_session=True)
    peak = [0]
    stopped: list[str] = []

    def sample():
        while proc.poll() is None:
            now = tree_pss(proc.pid)
            peak[0] = max(peak[0], now)
            if max_gb is not None and now > max_gb * 1e9 and not stopped:
                stopped.append(f"stopped at {now / 1e9:.1f} GB of PSS after {time.perf_counter() - t0:.0f} s")
                for c in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
                    try:
                        c.kill()
                    except psutil.NoSuchProcess:
                        pass
            time.sleep(0.25)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stdout, _ = proc.communicate()
    th.join()
    if stopped:
        return {"stopped": stopped[0], "tree_peak_gb": peak[0] / 1e9}
    if proc.returncode != 0:
        raise SystemExit(f"arm {arm} failed (exit {proc.returncode})")
    r = json.loads(stdout.strip().splitlines()[-1])
    r["tree_peak_gb"] = peak[0] / 1e9
    return r


def _chunks(files: list[Path], rows: int = 1 << 20):
    """A table's rows (its files in order) as tables of exactly `rows` rows (the last one fewer)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pending, n = [], 0
    for f in files:
        for b in pq.ParquetFile(f).iter_batches(batch_size=rows):
            pending.append(b)
            n += b.num_rows
            while n >= rows:
                t = pa.Table.from_batches(pending)
                yield t.slice(0, rows)
                rest = t.slice(rows)
                pending, n = rest.to_batches(), rest.num_rows
    if n:
        yield pa.Table.from_batches(pending)


def same_content(a: Path, b: Path) -> bool:
    """Same counts, vocabularies and rows of every split, read in chunks of 1M rows (whatever the
    part layout), so that two 100M-interaction datasets compare in bounded memory."""
    from itertools import zip_longest

    from unirec_dist.data.dataset import PreparedDataset, split_files

    da, db = PreparedDataset.open(a), PreparedDataset.open(b)
    if da.manifest["counts"] != db.manifest["counts"] or da.vocab_hash != db.vocab_hash:
        return False
    for n in ("interactions", "train", "valid", "test"):
        for x, y in zip_longest(_chunks(split_files(a, n)), _chunks(split_files(b, n))):
            if x is None or y is None or not x.equals(y):
                return False
    return True


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--arrow-sizes", default=None, help="sizes to run the Arrow engine at (default: the smallest)")
    ap.add_argument("--arrow-max-gb", type=float, default=16.0, help="stop the Arrow arm past this process-tree PSS")
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--stages", default="prepare,pretrain")
    ap.add_argument("--pretrain-steps", type=int, default=40)
    ap.add_argument("--arm", choices=["ray", "arrow", "pretrain"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--ingest", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm == "pretrain":
        run_pretrain_arm(args.data, args.out, args.ingest, args.pretrain_steps)
        return
    if args.arm:
        run_arm(args.arm, args.data, args.out)
        return
    base = args.dir or default_dir()
    sizes = [int(s) for s in args.sizes.split(",")]
    arrow_sizes = {int(s) for s in args.arrow_sizes.split(",") if int(s)} if args.arrow_sizes else {min(sizes)}
    stages = set(args.stages.split(","))
    results = {}
    for n in sizes if "prepare" in stages else ():
        t0 = time.perf_counter()
        data = generate(base, n)
        meta = json.loads((data / "DONE").read_text())
        print(f"{n:,} interactions: {meta['users']:,} users, {meta['items']:,} items, "
              f"{meta['duplicates']:,} duplicates (log ready in {time.perf_counter() - t0:.1f} s)", flush=True)
        for engine in ("ray", "arrow") if n in arrow_sizes else ("ray",):
            print(f"  prepare --engine {engine:5s}: start ({load()})", flush=True)
            r = measure(["--arm", engine, "--data", str(data), "--out", str(base / "out" / f"n{n}-{engine}")],
                        args.arrow_max_gb if engine == "arrow" else None)
            results[(n, engine)] = r
            if "stopped" in r:
                print(f"  prepare --engine {engine:5s}: {r['stopped']} ({load()})", flush=True)
                continue
            print(f"  prepare --engine {engine:5s}: wall {r['wall_s']:7.1f} s, driver peak RSS "
                  f"{r['driver_peak_gb']:.2f} GB, process tree peak {r['tree_peak_gb']:.2f} GB ({load()})", flush=True)
        if n in arrow_sizes and "stopped" not in results[(n, "arrow")]:
            same = same_content(base / "out" / f"n{n}-arrow", base / "out" / f"n{n}-ray")
            print(f"  same content (arrow vs ray): {same}", flush=True)
    rays = [results[(n, "ray")] for n in sizes if (n, "ray") in results]
    if len(rays) > 1:
        print(f"ray driver peak RSS, {sizes[-1]:,} vs {sizes[0]:,}: "
              f"{rays[-1]['driver_peak_gb'] / rays[0]['driver_peak_gb']:.2f}x", flush=True)
    if "pretrain" not in stages:
        return
    pre = {}
    for n in sizes:
        data = base / "out" / f"n{n}-ray"
        for ingest in ("stream", "memory"):
            print(f"pretrain --workers 2, {n:,}, ingest {ingest}: start ({load()})", flush=True)
            r = measure(["--arm", "pretrain", "--data", str(data), "--out", str(base / "runs" / f"n{n}-{ingest}"),
                         "--ingest", ingest, "--pretrain-steps", str(args.pretrain_steps)])
            pre[(n, ingest)] = r
            print(f"pretrain --workers 2, {n:,}, ingest {ingest}: {r['timed_steps']} timed steps, "
                  f"{r['positions_per_s']:,.0f} positions/s, worker peak RSS "
                  f"{', '.join(f'{g:.2f}' for g in r['worker_peak_gb'])} GB (item table + state "
                  f"{', '.join(f'{g:.2f}' for g in r['table_gb'])} GB), process tree peak {r['tree_peak_gb']:.2f} GB, "
                  f"job {r['job_s']:.0f} s ({load()})", flush=True)
        print(f"  streaming / in-memory positions/s at {n:,}: "
              f"{pre[(n, 'stream')]['positions_per_s'] / pre[(n, 'memory')]['positions_per_s']:.2f}x", flush=True)
    if len(sizes) > 1:
        a, b = pre[(sizes[0], "stream")], pre[(sizes[-1], "stream")]
        print(f"streamed worker peak RSS, {sizes[-1]:,} vs {sizes[0]:,}: {max(b['worker_peak_gb']) / max(a['worker_peak_gb']):.2f}x; "
              f"less the item table + state: {max(x - t for x, t in zip(b['worker_peak_gb'], b['table_gb'])) / max(x - t for x, t in zip(a['worker_peak_gb'], a['table_gb'])):.2f}x",
              flush=True)


if __name__ == "__main__":
    main()
