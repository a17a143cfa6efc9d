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
smallest size (and at larger ones with --memory-all) for comparison.
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000000,100000000")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-batches", type=int, default=400)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--memory-all", action="store_true", help="run the in-memory path at every size")
    ap.add_argument("--measure", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.measure:
        print(json.dumps(measure(a.measure[0], a.measure[1], a.workers, a.max_batches)))
        return 0
    out = Path(a.dir) if a.dir else default_dir()
    sizes = [int(s) for s in a.sizes.split(",")]
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
