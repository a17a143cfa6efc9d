"""Tables larger than one worker, trained end to end through the real path (`unirec pretrain`'s
library call: Ray Train, TorchRecStrategy, DMP, DCP), then continued under another plan and
fine-tuned in one process.

    python bench/scale_tables.py [--items 20000000] [--users 30000000] [--dim 64] [--steps 20]
                                 [--scale 1.0] [--finetune] [--work runs/bench/scale-tables]
                                 [--floor-gb 3] [--keep] [--only-continue]

Default size: an item table of 20M x 64 and a user-id table (model.embedding.user_id) of 30M x 64,
fp32, with fused RowWiseAdagrad (one float of state per row): 12.1 GiB of weights + optimizer
state, more than half of a 24 GiB machine. `--scale s` multiplies both row counts (the same run,
smaller). Stages:

1. a tiny run of the same model (1,000-row tables) on 2 workers: the per-worker constant (Ray
   worker, torch, TorchRec, Lightning, batches);
2. `pretrain --workers 2`, both tables row_wise (the planner's constraint), `--steps` steps, a DCP
   checkpoint at the end: per-worker peak memory (VmHWM) against (table + optimizer bytes) / 2 +
   the constant of stage 1, and each rank's shard rows as the sharded module reports them;
3. 1 worker: the driver's planner check, with workers as big as the 2-worker peak
   (`distributed.memory_gb`), refuses it (bytes needed and available, the planner's estimate);
   the planner's per-rank bytes for 1 worker against 2 are printed; the 1-worker run is measured
   only where it fits the safety rule below (on a shared 24 GiB machine a 12 GiB process could
   reach the OOM killer);
4. `--resume-from` the stage-2 checkpoint on 2 workers with both tables table_wise (a different
   plan: DCP reshards weights and optimizer state), `--steps` more steps: the global step and the
   loss continue (rank 0's per-step training loss, logs/metrics.csv of both runs);
   (`--only-continue` runs this stage alone, from the stage-2 dataset and checkpoint that a
   previous run left in --work);
5. with `--finetune`: `unirec finetune` in 1 process from the stage-4 checkpoint on 5% of the
   users (the whole model is loaded into that process: only at a size that fits).

Data: the synthetic log of tests/synthetic.py run through the real `prepare` (2,000 users,
300 items), whose user and item ids are then spread over the full vocabularies by a fixed
permutation (vocab files, splits and manifest rewritten together, vocab_hash recomputed), so every
row-wise shard sees lookups; sampled-softmax negatives are drawn over all items.

Safety: before each run the expected peak of all workers ((tables + state) / workers + one
checkpoint block (at most 256 MiB), which DCP copies while saving, + the constant) must fit in MemAvailable minus
`--floor-gb` (waiting a few minutes for other jobs), else the stage is skipped with the figures; while a run goes, a watchdog kills this
bench's own process tree if MemAvailable falls under the floor.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "configs/pretrain/debug.yaml"
FINETUNE = ROOT / "configs/finetune/debug.yaml"
GIB = 2**30


DOG: Watchdog | None = None   # the running bench's watchdog (samples the workers' RSS too)


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


class Watchdog(threading.Thread):
    """Kills this process's children (Ray's head and workers, started by this bench) and exits
    when the machine's MemAvailable falls under `floor` bytes."""

    def __init__(self, floor: int) -> None:
        super().__init__(daemon=True)
        self.floor, self.stop = floor, threading.Event()
        self.low = mem_available()
        #: largest sampled RSS of each Ray train worker process (pid -> bytes), training and checkpointing
        self.peaks: dict[int, int] = {}

    def take_peaks(self) -> list[float]:
        """The sampled peaks (GiB) since the last call, largest first."""
        got, self.peaks = sorted(self.peaks.values(), reverse=True), {}
        return [round(v / GIB, 2) for v in got]

    def run(self) -> None:
        import psutil

        while not self.stop.wait(0.5):
            avail = mem_available()
            self.low = min(self.low, avail)
            for p in psutil.Process().children(recursive=True):   # Ray train workers' RSS, sampled
                try:
                    if "RayTrainWorker" in " ".join(p.cmdline()):
                        self.peaks[p.pid] = max(self.peaks.get(p.pid, 0), p.memory_info().rss)
                except psutil.Error:
                    pass
            if avail < self.floor:
                print(f"\nwatchdog: MemAvailable {avail / GIB:.1f} GiB < floor {self.floor / GIB:.1f} GiB: "
                      f"killing this bench's processes (Ray train workers' sampled peak RSS so far: "
                      f"{sorted((round(v / GIB, 2) for v in self.peaks.values()), reverse=True)} GiB)", flush=True)
                for p in psutil.Process().children(recursive=True):
                    try:
                        p.send_signal(signal.SIGKILL)
                    except psutil.Error:
                        pass
                os._exit(3)


def spread(arr, n: int):
    """Ids 1..k -> distinct ids in 1..n-1 (fixed permutation); list columns element-wise."""
    import numpy as np
    import pyarrow as pa

    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        arr = arr.combine_chunks() if hasattr(arr, "combine_chunks") else arr
        vals = spread(arr.flatten(), n)
        return type(arr).from_arrays(arr.offsets, vals)
    # a multiplier coprime with n - 1 near the golden ratio of it: consecutive ids land far apart
    m = int((n - 1) * 0.6180339887)
    while math.gcd(m, n - 1) != 1:
        m += 1
    v = np.asarray(arr.to_numpy(zero_copy_only=False)).astype("int64")
    out = np.where(v > 0, 1 + ((v - 1) * m) % (n - 1), v)
    return pa.array(out.astype("int32"))


def make_dataset(work: Path, users: int, items: int) -> Path:
    """Real `prepare` on a synthetic log, then user and item ids spread over `users`/`items` rows."""
    import pyarrow.parquet as pq

    from tests.synthetic import prepared_dataset
    from unirec_dist.data.prepare import item_counts_table, train_item_counts, vocab_hash
    from unirec_dist.data.sources import sha256_file

    ds = work / f"ds-{users}-{items}" / "ds"
    if (ds / "manifest.json").is_file():
        return ds
    shutil.rmtree(ds.parent, ignore_errors=True)
    ds = prepared_dataset(ds, n_users=2000, n_items=300, n_events=40_000, seed=0)
    man = json.loads((ds / "manifest.json").read_text())
    cols = {"user": ("user",), "item": ("item", "items", "history", "targets")}
    for path in sorted(ds.rglob("*.parquet")):
        t = pq.read_table(path)
        is_vocab = path.parent.name == "vocab"
        for kind, n in (("user", users), ("item", items)):
            if is_vocab:
                if path.stem == kind:
                    t = t.set_column(t.schema.get_field_index("index"), "index", spread(t["index"].combine_chunks(), n))
                continue
            for c in cols[kind]:
                if c in t.column_names:
                    i = t.schema.get_field_index(c)
                    t = t.set_column(i, c, spread(t[c].combine_chunks(), n))
        pq.write_table(t, path)
    man["vocab_sizes"]["user"], man["vocab_sizes"]["item"] = users, items
    if "item_counts" in man:   # the logQ counts, recounted over the spread ids (sha256 in the manifest)
        train, valid = (pq.read_table(ds / f"{s}.parquet").sort_by("user") for s in ("train", "valid"))
        pq.write_table(item_counts_table(*train_item_counts(train, valid, items - 1)), ds / man["item_counts"]["file"])
        man["item_counts"]["sha256"] = sha256_file(ds / man["item_counts"]["file"])
    man["vocab_hash"] = vocab_hash(pq.read_table(ds / "vocab/user.parquet"), pq.read_table(ds / "vocab/item.parquet"))
    man["note"] = f"bench/scale_tables.py: ids spread over {users} users and {items} items"
    (ds / "manifest.json").write_text(json.dumps(man, indent=2))
    return ds


def overrides(ds: Path, out: Path, dim: int, steps: int, plan: str) -> list[str]:
    return [
        f"data.path={ds}", f"trainer.out_dir={out}", "name=scale-tables", "data.batch_size=64", "data.max_len=20",
        f"trainer.max_steps={steps}", "trainer.max_epochs=1000", "trainer.limit_train_batches=1.0",
        "trainer.threads=1", "trainer.loggers=[csv]", "trainer.log_every_n_steps=1",
        f"model.embedding.dim={dim}", "model.embedding.user_id=true", "model.embedding.item_features=[]",
        "model.encoder={kind: mf}", f"distributed.sharding.t_user={plan}", f"distributed.sharding.t_item={plan}",
        "optim.tables=rowwise_adagrad", "distributed.checkpoint_every_n_steps=0",
    ]


def run(ds: Path, out: Path, workers: int, dim: int, steps: int, plan: str, resume: Path | None = None,
        memory_gb: float | None = None) -> dict:
    from unirec_dist.config.distributed import load_pretrain_config
    from unirec_dist.training.pretrain import pretrain

    shutil.rmtree(out, ignore_errors=True)
    if DOG is not None:
        DOG.take_peaks()
    extra = [f"distributed.memory_gb={memory_gb}"] if memory_gb else []
    cfg = load_pretrain_config(CONFIG, overrides(ds, out, dim, steps, plan) + extra)
    cfg.distributed.resume_from = str(resume) if resume else None
    for attempt in range(4):
        t0 = time.perf_counter()
        try:
            final = pretrain(cfg, workers=workers, progress=False)
            break
        except Exception as e:   # Ray waits 30 s (fixed) for its raylet; a loaded machine can need more
            if "timed out during startup" not in str(e) or attempt == 3:
                raise
            print(f"  (Ray did not start within its 30 s on a machine at load {os.getloadavg()[0]:.0f}: retrying)")
            import ray

            ray.shutdown()          # whatever of the half-started local cluster is left
            time.sleep(10)
    secs = time.perf_counter() - t0
    summary = json.loads((out / "pretrain.json").read_text())
    return {"workers": workers, "seconds": secs, "steps": summary["steps"], "stats": summary["worker_stats"],
            "sampled_peaks_gib": DOG.take_peaks() if DOG is not None else [],
            "plan": summary["plan"], "final": str(final.resolve()), "loss": losses(out)}


def losses(out: Path) -> dict[int, float]:
    """Rank 0's training loss per global step (logs/metrics.csv)."""
    path = out / "logs" / "metrics.csv"
    res: dict[int, float] = {}
    if not path.is_file():
        return res
    with path.open() as f:
        for row in csv.DictReader(f):
            v = row.get("train/loss_step") or row.get("train/loss")
            if v:
                res[int(row["step"])] = float(v)
    return res


def placed(plan: dict) -> str:
    return ", ".join(f"{n} on rank {t['ranks']}" for n, t in plan["tables"].items())


def wait_for_memory(need: int, floor: int, timeout_s: float = 300.0) -> bool:
    """Whether `need` bytes fit in MemAvailable - floor, waiting up to `timeout_s` for other jobs."""
    deadline = time.monotonic() + timeout_s
    while need > mem_available() - floor:
        if time.monotonic() > deadline:
            return False
        time.sleep(10)
    return True


def expected_peak(table_bytes: int, state_bytes: int, block: int, workers: int, const: int) -> int:
    """Per-worker peak: its share of tables + state, one DCP block copied while saving, the constant."""
    return (table_bytes + state_bytes) // workers + block + const


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=20_000_000)
    ap.add_argument("--users", type=int, default=30_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply both row counts")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--finetune", action="store_true", help="stage 5: fine-tune the whole model in 1 process")
    ap.add_argument("--floor-gb", type=float, default=3.0, help="MemAvailable the machine keeps (GiB)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench" / "scale-tables"))
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    ap.add_argument("--json", default=None)
    ap.add_argument("--only-continue", action="store_true",
                    help="stage 4 alone, from the stage-2 dataset and checkpoint a previous run left in --work")
    a = ap.parse_args()
    if a.dim % 4:
        ap.error("--dim: a multiple of 4 (FBGEMM's fused kernels)")

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    items, users = int(a.items * a.scale), int(a.users * a.scale)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    floor = int(a.floor_gb * GIB)
    global DOG
    dog = DOG = Watchdog(floor)
    dog.start()
    table = (items + users) * a.dim * 4
    state = (items + users) * 4                       # RowWiseAdagrad: one float per row
    # what DCP copies at once while saving: one stored block (the checkpoint writes shards in row
    # blocks of at most MAX_CHUNK_BYTES; it used to copy the largest row-wise shard whole)
    from unirec_dist.checkpoint.dcp import MAX_CHUNK_BYTES

    block = min(max(items, users) // 2 * a.dim * 4, MAX_CHUNK_BYTES)
    res: dict = {"items": items, "users": users, "dim": a.dim, "table_bytes": table, "state_bytes": state,
                 "mem_available_start": mem_available(), "load_start": os.getloadavg()}
    print(f"tables: t_item {items:,} x {a.dim} + t_user {users:,} x {a.dim} fp32 = {table / GIB:.2f} GiB, "
          f"RowWiseAdagrad state {state / GIB:.2f} GiB: {(table + state) / GIB:.2f} GiB; "
          f"MemAvailable {mem_available() / GIB:.1f} GiB, load {os.getloadavg()[0]:.1f}")

    if a.only_continue:     # a previous run's stage 2 (e.g. stage 4 stopped by the watchdog)
        ds = make_dataset(work, users, items)
        prev = work / "run-2w"
        final = (prev / "checkpoints" / "final").resolve()
        if not (final / "manifest.json").is_file():
            ap.error(f"--only-continue: no stage-2 checkpoint at {prev}/checkpoints/final")
        r2 = {"final": str(final), "steps": json.loads((final / "manifest.json").read_text())["step"],
              "loss": losses(prev)}
        return continue_table_wise(a, ds, work, r2, res)

    # 1. the per-worker constant
    tiny = make_dataset(work, 4000, 1000)      # vocab >= the log's 2,000 users and 300 items
    r0 = run(tiny, work / "run-tiny", 2, a.dim, a.steps, "row_wise")
    const = int(max(w["hwm_mib"] for w in r0["stats"]) * 2**20)
    res["constant_bytes"] = const
    print(f"\n1. constant: the same model with 4,000 + 1,000-row tables on 2 workers peaks at {const / GIB:.2f} GiB per worker")

    # 2. 2 workers, row-wise
    ds = make_dataset(work, users, items)
    need2 = 2 * expected_peak(table, state, block, 2, const)
    if not wait_for_memory(need2, floor):
        print(f"\n2. skipped: 2 workers would need about {need2 / GIB:.1f} GiB ((tables + state) / 2 + the block "
              f"DCP copies while saving + {const / GIB:.1f} GiB, per worker) but MemAvailable is "
              f"{mem_available() / GIB:.1f} GiB with a {a.floor_gb:g} GiB floor; rerun when the machine is free "
              f"or with --scale")
        return 1
    r2 = run(ds, work / "run-2w", 2, a.dim, a.steps, "row_wise")
    res["two_workers"] = r2
    pred = (table + state) / 2 + const
    print(f"\n2. 2 workers, row_wise: {r2['steps']} steps in {r2['seconds']:.0f} s (Ray start, init, training, "
          f"a {table / GIB:.1f} GiB checkpoint); load {os.getloadavg()[0]:.1f}")
    for w in r2["stats"]:
        t = w["tables"]
        print(f"  rank {w['rank']}: t_item rows {t['t_item']['rows']:,} from {t['t_item']['row_offset']:,}, "
              f"t_user rows {t['t_user']['rows']:,} from {t['t_user']['row_offset']:,}: "
              f"{(t['t_item']['bytes'] + t['t_user']['bytes']) / GIB:.2f} GiB of shards; "
              f"VmHWM {w['hwm_mib'] / 1024:.2f} GiB (at the end of training, before the checkpoint) "
              f"vs (tables + state) / 2 + constant = {pred / GIB:.2f} GiB ({w['hwm_mib'] * 2**20 / pred:.2f}x)")
    print(f"  sampled peak RSS of the 2 workers over the whole run, checkpoint included: {r2['sampled_peaks_gib']} GiB")
    peak2 = max(w["hwm_mib"] for w in r2["stats"]) / 1024

    # 3. 1 worker: the planner's estimate and the driver's refusal for workers of the 2-worker peak
    from unirec_dist.embeddings.sharding import dry_run_plan
    from unirec_dist.errors import ConfigError

    spec = [{"name": "t_item", "num_embeddings": items, "embedding_dim": a.dim, "kind": "seq"},
            {"name": "t_user", "num_embeddings": users, "embedding_dim": a.dim, "kind": "seq"}]
    per_rank = {}
    for n in (1, 2):
        s = dry_run_plan(spec, n, "cpu", memory_bytes=64 * GIB, local_world_size=n,
                         constraints={"t_item": "row_wise", "t_user": "row_wise"}, batch_size=64)
        per_rank[n] = max(s["weights_bytes_per_rank"].values())
    mem_gb = round(peak2 + 0.5, 1)
    try:
        run(ds, work / "run-1w", 1, a.dim, a.steps, "row_wise", memory_gb=mem_gb)
        refusal = None
    except ConfigError as e:
        refusal = str(e)
    res["one_worker"] = {"planner_weights_per_rank": per_rank, "memory_gb": mem_gb, "refusal": refusal}
    print(f"\n3. 1 worker: the planner places {per_rank[1] / GIB:.2f} GiB of weights on its one rank against "
          f"{per_rank[2] / GIB:.2f} GiB per rank on 2 ({per_rank[1] / per_rank[2]:.2f}x), plus the state; "
          f"with workers of {mem_gb} GiB (distributed.memory_gb, the 2-worker peak + 0.5): "
          + (f"refused before workers start: {refusal}" if refusal else "NOT refused (unexpected)"))
    need1 = expected_peak(table, state, block, 1, const)
    if wait_for_memory(need1, floor, 120):
        r1 = run(ds, work / "run-1w", 1, a.dim, a.steps, "row_wise")
        one = r1["stats"][0]["hwm_mib"] / 1024
        res["one_worker"]["measured"] = r1
        print(f"  measured (it fits this machine now): VmHWM {one:.2f} GiB on 1 worker vs {peak2:.2f} GiB per worker "
              f"on 2 ({one / peak2:.2f}x); (tables + state) + constant = {(table + state + const) / GIB:.2f} GiB")
    else:
        print(f"  not measured: 1 worker would peak near {need1 / GIB:.1f} GiB (with one DCP block copied while saving "
              f"while saving) and MemAvailable is {mem_available() / GIB:.1f} GiB with a {a.floor_gb:g} GiB floor")

    return continue_table_wise(a, ds, work, r2, res)


def continue_table_wise(a: argparse.Namespace, ds: Path, work: Path, r2: dict, res: dict) -> int:
    """Stage 4 (and 5 with --finetune): the stage-2 checkpoint continued on 2 workers, table-wise."""
    # 4. continue under another plan
    r4 = run(ds, work / "run-2w-tw", 2, a.dim, 2 * a.steps, "table_wise", resume=Path(r2["final"]))
    res["resumed"] = r4
    first, cont = r2["loss"], r4["loss"]
    print(f"\n4. --resume-from the step-{r2['steps']} checkpoint on 2 workers, table_wise "
          f"({placed(r4['plan'])}): "
          f"steps {min(cont, default='?')}..{r4['steps']} in {r4['seconds']:.0f} s")
    if first and cont:
        k = max(1, min(5, len(first) // 4))
        head = sum(list(first.values())[:k]) / k
        tail = sum(list(first.values())[-k:]) / k
        nxt = sum(list(cont.values())[:k]) / k
        print(f"  rank-0 training loss: first {k} steps {head:.4f}, last {k} before the checkpoint {tail:.4f}, "
              f"first {k} after resuming {nxt:.4f}")
        res["loss_summary"] = {"first": head, "before": tail, "after": nxt, "k": k}
    for w in r4["stats"]:
        rows = ", ".join(f"{n} {t['rows']:,} rows" for n, t in w["tables"].items())
        print(f"  rank {w['rank']}: tables {rows}; VmHWM {w['hwm_mib'] / 1024:.2f} GiB")
    print(f"  sampled peak RSS of the 2 workers over the whole run, checkpoint load and save included: "
          f"{r4['sampled_peaks_gib']} GiB")

    # 5. fine-tune in 1 process
    if a.finetune:
        need = 2 * (res["table_bytes"] + res["state_bytes"]) + res.get("constant_bytes", 0)
        if not wait_for_memory(need, int(a.floor_gb * GIB), 120):
            print(f"\n5. skipped: 1-process fine-tuning holds the whole model and its aligned copy, about "
                  f"{need / GIB:.1f} GiB; MemAvailable {mem_available() / GIB:.1f} GiB")
        else:
            import subprocess

            ft = work / "finetune"
            shutil.rmtree(ft, ignore_errors=True)
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "unirec_dist", "finetune", "--from", r4["final"],
                                "--config", str(FINETUNE), f"data.path={ds}", f"trainer.out_dir={ft}",
                                "data.fraction=0.05", "trainer.max_epochs=1", "trainer.limit_train_batches=5",
                                "data.valid_max_users=50"], capture_output=True, text=True)
            secs = time.perf_counter() - t0
            ok = p.returncode == 0
            fm = json.loads((ft / "checkpoints" / "last" / "manifest.json").read_text()) if ok else {}
            res["finetune"] = {"rc": p.returncode, "seconds": secs, "stderr_tail": p.stderr[-2000:],
                               "source_step": (fm.get("finetune") or {}).get("source", {}).get("step")}
            print(f"\n5. unirec finetune in 1 process from the step-{r4['steps']} checkpoint on 5% of the users: "
                  + (f"done in {secs:.0f} s (source step {res['finetune']['source_step']})" if ok
                     else f"FAILED (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:]}"))
    assert DOG is not None
    DOG.stop.set()
    res["mem_available_low"] = DOG.low
    print(f"\nlowest MemAvailable during the bench: {DOG.low / GIB:.1f} GiB; load now {os.getloadavg()[0]:.1f}")
    if not a.keep:
        for d in ("run-tiny", "run-2w", "run-1w", "run-2w-tw", "finetune"):
            shutil.rmtree(work / d, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
