"""`prepare --engine ray` at scale: wall time, driver peak RSS and the whole process tree's peak.

    python bench/scale_data.py [--sizes 1000000,10000000] [--dir DIR] [--arrow-sizes SIZE,...]

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
datasets are compared row for row where both ran (`same content`).
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


def measure(engine: str, data: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--arm", engine, "--data", str(data), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_pss(proc.pid))
            time.sleep(0.25)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stdout, _ = proc.communicate()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"{engine} arm failed (exit {proc.returncode})")
    r = json.loads(stdout.strip().splitlines()[-1])
    r["tree_peak_gb"] = peak[0] / 1e9
    return r


def same_content(a: Path, b: Path) -> bool:
    from unirec_dist.data.dataset import PreparedDataset

    da, db = PreparedDataset.open(a), PreparedDataset.open(b)
    return (da.manifest["counts"] == db.manifest["counts"] and da.vocab_hash == db.vocab_hash
            and all(da.table(n).equals(db.table(n)) for n in ("interactions", "train", "valid", "test")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--arrow-sizes", default=None, help="sizes to run the Arrow engine at (default: the smallest)")
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--arm", choices=["ray", "arrow"], help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm:
        run_arm(args.arm, args.data, args.out)
        return
    base = args.dir or default_dir()
    sizes = [int(s) for s in args.sizes.split(",")]
    arrow_sizes = {int(s) for s in args.arrow_sizes.split(",")} if args.arrow_sizes else {min(sizes)}
    results = {}
    for n in sizes:
        t0 = time.perf_counter()
        data = generate(base, n)
        meta = json.loads((data / "DONE").read_text())
        print(f"{n:,} interactions: {meta['users']:,} users, {meta['items']:,} items, "
              f"{meta['duplicates']:,} duplicates (log ready in {time.perf_counter() - t0:.1f} s)", flush=True)
        for engine in ("ray", "arrow") if n in arrow_sizes else ("ray",):
            r = measure(engine, data, base / "out" / f"n{n}-{engine}")
            results[(n, engine)] = r
            print(f"  prepare --engine {engine:5s}: wall {r['wall_s']:7.1f} s, driver peak RSS "
                  f"{r['driver_peak_gb']:.2f} GB, process tree peak {r['tree_peak_gb']:.2f} GB", flush=True)
        if n in arrow_sizes:
            same = same_content(base / "out" / f"n{n}-arrow", base / "out" / f"n{n}-ray")
            print(f"  same content (arrow vs ray): {same}", flush=True)
    rays = [results[(n, "ray")] for n in sizes]
    if len(rays) > 1:
        print(f"ray driver peak RSS, {sizes[-1]:,} vs {sizes[0]:,}: "
              f"{rays[-1]['driver_peak_gb'] / rays[0]['driver_peak_gb']:.2f}x")


if __name__ == "__main__":
    main()
