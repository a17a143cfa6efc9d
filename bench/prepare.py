"""Benchmark `unirec prepare` (Arrow engine) against the same steps written plainly in pandas.

    python bench/prepare.py [--events 20000000] [--skip-pandas-large] [--work DIR]

Arms, each in its own subprocess so that peak RSS (ru_maxrss) is the arm's own; wall and CPU time
starts after the imports:
  ml-1m/arrow      prepare(configs/datasets/ml-1m.yaml)   (files fetched and cached beforehand)
  ml-1m/pandas     the same steps in pandas (read, clean, encode, k-core, sort, sequences,
                   leave-one-out, item features with genres and hashed title tokens, Parquet)
  synth/arrow      a synthetic log of --events interactions (Parquet) + an item table,
  synth/pandas     with min_rating, 5-core filtering and leave-one-out
Targets (issue 2): ML-1M < 3 s; 20M interactions < 60 s and peak RSS < 4 GB; >= 5x pandas.
The pandas arm reads ML-1M the way pandas users do (`sep="::", engine="python"`); its read time
is printed separately so the ratio can be judged with and without it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------- synthetic log
def make_synthetic(path: Path, n_events: int, n_users: int, n_items: int, seed: int = 0) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    inter_path, items_path = path / "interactions.parquet", path / "items.parquet"
    if not inter_path.is_file():
        path.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        users = rng.integers(0, n_users, n_events)
        pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
        items = rng.choice(n_items, n_events, p=pop / pop.sum())
        ts = rng.integers(1_200_000_000, 1_500_000_000, n_events)
        rating = (rng.integers(1, 11, n_events) / 2).astype(np.float32)
        dup = rng.integers(0, n_events, n_events // 100)                # 1% exact duplicates
        users, items, ts, rating = (np.concatenate([a, a[dup]]) for a in (users, items, ts, rating))
        uid = pa.array(users, pa.int64())
        null = np.zeros(len(users), bool)
        null[rng.integers(0, len(users), n_events // 1000)] = True      # 0.1% missing user ids
        uid = pa.array(users, pa.int64(), mask=null)
        pq.write_table(pa.table({"user_id": uid, "item_id": pa.array(items, pa.int64()), "ts": ts, "rating": rating}),
                       inter_path)
        ids = np.arange(n_items)
        words = np.array(["love", "war", "night", "blue", "return", "city", "dark", "story", "king", "girl"])
        pq.write_table(pa.table({
            "item_id": ids,
            "category": np.array(["a", "b", "c", "d", "e"])[ids % 5],
            "tags": np.char.add(np.char.add(words[ids % 10], "|"), words[(ids // 10) % 10]),
            "title": np.char.add(np.char.add(words[(ids * 7) % 10], " "), np.char.add(words[(ids // 3) % 10], " II")),
        }), items_path)
    return {
        "name": "synthetic", "source": {"kind": "table", "interactions": str(inter_path), "items": str(items_path)},
        "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts", "rating": "rating"},
        "item_features": [{"column": "category", "kind": "categorical"}, {"column": "tags", "kind": "multi"},
                          {"column": "title", "kind": "text", "buckets": 20000, "max_tokens": 16}],
        "filter": {"min_rating": 1.0, "user_core": 5, "item_core": 5},
        "split": {"protocol": "leave_one_out"},
    }


# ----------------------------------------------------------------------------- pandas arm
def pandas_prepare(cfg: dict, out: Path, movielens_dir: str | None) -> dict:
    """The same steps, written plainly in pandas."""
    import hashlib

    import numpy as np
    import pandas as pd

    t0 = time.perf_counter()
    if movielens_dir:
        d = Path(movielens_dir)
        df = pd.read_csv(d / "ratings.dat", sep="::", engine="python", names=["user_id", "item_id", "rating", "timestamp"])
        items = pd.read_csv(d / "movies.dat", sep="::", engine="python", names=["item_id", "title", "genres"],
                            encoding="latin-1")
        items["year"] = items["title"].str.extract(r"\((\d{4})\)\s*$")[0]
        items["title"] = items["title"].str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True)
        ucol, icol, tcol, rcol = "user_id", "item_id", "timestamp", "rating"
        cat_cols, multi_cols, text_cols = ["year"], ["genres"], ["title"]
    else:
        df = pd.read_parquet(cfg["source"]["interactions"])
        items = pd.read_parquet(cfg["source"]["items"])
        ucol, icol, tcol, rcol = "user_id", "item_id", "ts", "rating"
        cat_cols, multi_cols, text_cols = ["category"], ["tags"], ["title"]
    t_read = time.perf_counter() - t0
    counts = {"raw": len(df)}
    df = df[[ucol, icol, tcol, rcol]].rename(columns={ucol: "user", icol: "item", tcol: "timestamp", rcol: "rating"})
    n = len(df)
    df = df.dropna(subset=["user", "item"])
    counts["dropped_null_ids"] = n - len(df)
    n = len(df)
    df = df.dropna(subset=["timestamp"])
    counts["dropped_null_timestamps"] = n - len(df)
    n = len(df)
    df = df.drop_duplicates()
    counts["dropped_duplicates"] = n - len(df)
    min_rating = cfg["filter"].get("min_rating")
    if min_rating is not None:
        n = len(df)
        df = df[df["rating"] >= min_rating]
        counts["dropped_rating_filter"] = n - len(df)
    uc, ic = cfg["filter"].get("user_core", 0), cfg["filter"].get("item_core", 0)
    while uc > 1 or ic > 1:
        ucount = df.groupby("user")["item"].transform("size")
        icount = df.groupby("item")["user"].transform("size")
        keep = (ucount >= uc) & (icount >= ic)
        if keep.all():
            break
        df = df[keep]
    users = np.sort(df["user"].unique())
    item_ids = np.sort(df["item"].unique())
    df["user"] = pd.Categorical(df["user"], categories=users).codes.astype("int32") + 1
    df["item"] = pd.Categorical(df["item"], categories=item_ids).codes.astype("int32") + 1
    # a user's events by time, ties in source row order (a stable sort), as prepare orders them
    df = df.sort_values(["user", "timestamp"], kind="stable").reset_index(drop=True)
    out.mkdir(parents=True)
    (out / "vocab").mkdir()
    df.to_parquet(out / "interactions.parquet")
    pd.DataFrame({"raw": users.astype(str), "index": np.arange(1, len(users) + 1)}).to_parquet(out / "vocab/user.parquet")
    pd.DataFrame({"raw": item_ids.astype(str), "index": np.arange(1, len(item_ids) + 1)}).to_parquet(out / "vocab/item.parquet")
    g = df.groupby("user")
    df["pos"] = g.cumcount()
    df["cnt"] = g["item"].transform("size")
    ev = df["cnt"] >= 3
    train = df[~ev | (df["pos"] < df["cnt"] - 2)].groupby("user").agg(
        items=("item", list), timestamps=("timestamp", list), ratings=("rating", list)).reset_index()
    train.to_parquet(out / "train.parquet")
    for name, k in (("valid", 2), ("test", 1)):
        e = df[ev]
        hist = e[e["pos"] < e["cnt"] - k].groupby("user")["item"].agg(list).rename("history")
        tgt = e[e["pos"] == e["cnt"] - k].groupby("user").agg(targets=("item", list), target_ratings=("rating", list))
        hist.to_frame().join(tgt).reset_index().to_parquet(out / f"{name}.parquet")
    # item features
    items = items.drop_duplicates(subset=[icol if movielens_dir is None else "item_id"])
    items = items.set_index("item_id").reindex(item_ids)
    feat = pd.DataFrame({"item": np.arange(1, len(item_ids) + 1)})
    for c in cat_cols:
        vals = items[c].dropna().astype(str)
        vocab = np.sort(vals.unique())
        feat[c] = pd.Categorical(items[c].astype(str).where(items[c].notna()), categories=vocab).codes + 1
        pd.DataFrame({"raw": vocab, "index": np.arange(1, len(vocab) + 1)}).to_parquet(out / f"vocab/{c}.parquet")
    for c in multi_cols:
        ex = items[c].fillna("").str.split("|").explode()
        ex = ex[ex.str.len() > 0]
        vocab = np.sort(ex.unique())
        codes = pd.Series(pd.Categorical(ex, categories=vocab).codes + 1, index=ex.index)
        feat[c] = codes.groupby(level=0).agg(list).reindex(item_ids).apply(
            lambda v: v if isinstance(v, list) else []).values
        pd.DataFrame({"raw": vocab, "index": np.arange(1, len(vocab) + 1)}).to_parquet(out / f"vocab/{c}.parquet")

    def fnv(tok: str, buckets: int = 20000) -> int:
        h = 0xCBF29CE484222325
        for b in tok.encode():
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        return 1 + h % (buckets - 1)

    for c in text_cols:
        toks = items[c].fillna("").str.lower().str.split(r"[^\w]+", regex=True)
        feat[c] = toks.apply(lambda ts: [fnv(t) for t in ts if t][:16]).values
    feat.to_parquet(out / "items.parquet")
    counts["final"] = len(df)
    counts["users"], counts["items"] = len(users), len(item_ids)
    _ = hashlib  # (vocab hash omitted: negligible)
    return {"counts": counts, "read_s": t_read}


# ----------------------------------------------------------------------------- arms
def peak_rss_bytes() -> int:
    """This process's peak RSS. VmHWM belongs to the process image, whereas ru_maxrss survives
    fork+exec on Linux and would report the parent's peak (the parent held the synthetic log)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_arm(arm: str, cfg_json: str, out: str) -> None:
    """Child process: run one arm, print one JSON line with wall time, CPU time and peak RSS."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    cfg = json.loads(cfg_json)
    extra: dict = {}
    # imports happen before the clock starts, in both arms (pyarrow itself imports pandas when
    # it is installed, which would otherwise be charged to the Arrow arm)
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from unirec_dist.config.dataset import DatasetConfig
    from unirec_dist.config.loader import from_dict
    from unirec_dist.data.dataset import PreparedDataset
    from unirec_dist.data.prepare import prepare

    t0, c0 = time.perf_counter(), time.process_time()
    if arm.endswith("/arrow"):
        prepare(from_dict(DatasetConfig, cfg["config"]), out)
        extra["counts"] = PreparedDataset.open(out).manifest["counts"]
    else:
        extra = pandas_prepare(cfg["config"], Path(out), cfg.get("movielens_dir"))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = peak_rss_bytes()
    print(json.dumps({"arm": arm, "wall_s": wall, "cpu_s": cpu, "peak_rss_gb": peak / 1e9, **extra}))


def spawn(arm: str, payload: dict, work: Path, timeout: float) -> dict:
    out = Path(tempfile.mkdtemp(dir=work)) / "out"
    cmd = [sys.executable, __file__, "--arm", arm, "--payload", json.dumps(payload), "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"arm": arm, "error": f"timed out after {timeout:.0f}s"}
    finally:
        import shutil

        shutil.rmtree(out.parent, ignore_errors=True)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        return {"arm": arm, "error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(lines[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000_000)
    ap.add_argument("--users", type=int, default=140_000)
    ap.add_argument("--items", type=int, default=27_000)
    ap.add_argument("--work", default=None, help="scratch dir (default: a temp dir; the synthetic log is cached here)")
    ap.add_argument("--skip-pandas-large", action="store_true", help="skip the pandas arm on the synthetic log")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--payload", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.arm:
        run_arm(a.arm, a.payload, a.out)
        return 0

    from unirec_dist.config.dataset import DatasetConfig
    from unirec_dist.config.loader import from_dict, read_yaml, to_dict
    from unirec_dist.data.movielens import fetch

    work = Path(a.work or tempfile.mkdtemp(prefix="unirec-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    ml_dir = fetch("movielens-1m")
    ml_cfg = to_dict(from_dict(DatasetConfig, read_yaml(ROOT / "configs/datasets/ml-1m.yaml")))
    t = time.perf_counter()
    syn_cfg = make_synthetic(work / f"synth-{a.events}", a.events, a.users, a.items)
    print(f"synthetic log ready ({a.events:,} events + 1% duplicates) in {time.perf_counter() - t:.1f}s", flush=True)

    results = []
    plan = [("ml-1m/arrow", {"config": ml_cfg}), ("ml-1m/pandas", {"config": ml_cfg, "movielens_dir": str(ml_dir)}),
            ("synth/arrow", {"config": syn_cfg})]
    if not a.skip_pandas_large:
        plan.append(("synth/pandas", {"config": syn_cfg}))
    for arm, payload in plan:
        r = spawn(arm, payload, work, a.timeout)
        results.append(r)
        if "error" in r:
            print(f"{arm:14s} ERROR {r['error']}", flush=True)
            continue
        c = r.get("counts", {})
        read = f", read {r['read_s']:.2f}s" if "read_s" in r else ""
        print(f"{arm:14s} {r['wall_s']:7.2f}s wall {r.get('cpu_s', 0):7.2f}s CPU  peak RSS {r['peak_rss_gb']:.2f} GB  "
              f"({c.get('final', 0):,} interactions, {c.get('users', 0):,} users, {c.get('items', 0):,} items{read})",
              flush=True)
    by = {r["arm"]: r for r in results if "error" not in r}
    print()
    for ds, target in (("ml-1m", 3.0), ("synth", 60.0)):
        ar, pd_ = by.get(f"{ds}/arrow"), by.get(f"{ds}/pandas")
        if ar:
            line = f"{ds}: arrow {ar['wall_s']:.2f}s (target < {target:.0f}s: {'ok' if ar['wall_s'] < target else 'MISSED'})"
            if ds == "synth":
                line += f", peak RSS {ar['peak_rss_gb']:.2f} GB (target < 4 GB: {'ok' if ar['peak_rss_gb'] < 4 else 'MISSED'})"
            if pd_:
                ratio = pd_["wall_s"] / ar["wall_s"]
                ratio_nr = (pd_["wall_s"] - pd_["read_s"]) / ar["wall_s"]
                line += (f"; pandas {pd_['wall_s']:.2f}s -> {ratio:.1f}x (target >= 5x: {'ok' if ratio >= 5 else 'MISSED'}; "
                         f"{ratio_nr:.1f}x without pandas' read)")
            print(line)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
