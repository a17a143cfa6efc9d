"""Pretraining scaling on this machine: `unirec pretrain` (Ray Train + TorchRecStrategy, the real
path) on ML-1M with the SASRec pretraining config, 1 worker vs 2 workers, a fixed amount of work.

    python bench/pretrain_scaling.py [--data data/prepared/ml-1m] [--steps 0]
        [--cores 2] [--pipeline] [key=value ...]

`--pipeline`: instead of 1 vs 2 workers, 2 workers with Lightning's plain loop vs 2 workers with
TorchRec's TrainPipelineSparseDist (`distributed.train_pipeline=sparse_dist`), the same steps, and
the ratio of their throughputs.

Per arm it prints: target positions/s (wall: all workers' positions over the timed wall time;
per worker: each worker's own), positions per CPU-second, per-worker peak memory (VmHWM), and
the whole job's wall time (Ray start, data, sharding, training, checkpoint). A target position is
every position of a training sequence that predicts a next item; timing covers the steps after the
first 3 (warm-up), measured inside each worker (the TrainThroughput callback, training/throughput.py).

Default work: one epoch per arm (48 steps of 128 sequences for 1 worker, 24 steps of 2 x 128
for 2 workers: the same sequences). The batches are length-grouped, so a few steps are a poor
sample (short-sequence batches run many more positions/s); `--steps N` runs N steps per arm.

The config runs as shipped (item dim 50: sharded tables are stored padded to a multiple of 4 for
FBGEMM's fused kernel). Arms use the same `--cores` CPU threads in total: 1 worker x cores
threads, 2 workers x cores/2 threads each; data.batch_size is per worker (2 workers train 2x the sequences per step).

Overhead ratio = 2-worker throughput / (2 x 1-worker throughput): the usual scaling efficiency,
1.0 when each added worker brings its own cores. Here the 2 workers share the same 2 cores the
1 worker used, so the ideal is 0.5 and the ratio measures what distribution costs on fixed
hardware (two processes instead of one, the per-step all-to-all of embedding lookups and the
all-reduce of dense grads over gloo, lock-step waiting), not how throughput scales with machines.
The CPU-time figure takes the other tenants of a shared machine out of the comparison; it also
shows that one multi-threaded worker is not free either (intra-op threading and OpenMP's
spin-waiting burn CPU time that single-threaded workers do not).
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

CONFIG = ROOT / "configs/pretrain/ml-1m-sasrec.yaml"
WARMUP = 3            # steps not timed (TrainThroughput default, training/throughput.py)
CANDIDATES = ("data/prepared/ml-1m",)   # the README's location; anything else via --data


def find_data(given: str | None) -> Path:
    from unirec_dist.errors import UnirecError
    from unirec_dist.training.data import open_prepared

    for p in ([given] if given else []) + [str(ROOT / c) for c in CANDIDATES]:
        try:
            path, man = open_prepared(p)
        except UnirecError:
            continue
        if man.get("name") == "ml-1m" or p == given:
            return path
    sys.exit("no prepared ML-1M found; run `unirec data fetch movielens-1m` and "
             "`unirec prepare --config configs/datasets/ml-1m.yaml --out data/prepared/ml-1m` (or pass --data)")


def run(data: Path, out: Path, workers: int, threads: int, steps: int, extra: list[str]) -> dict:
    from unirec_dist.config.distributed import load_pretrain_config
    from unirec_dist.training.pretrain import pretrain

    shutil.rmtree(out, ignore_errors=True)
    overrides = [f"data.path={data}", f"trainer.out_dir={out}", f"trainer.max_steps={steps or -1}",
                 f"trainer.max_epochs={1 if not steps else 1000}",
                 f"trainer.threads={threads}", "distributed.checkpoint_every_n_steps=0",
                 "distributed.sharding.t_item=row_wise" if workers > 1 else "distributed.sharding.t_item=table_wise",
                 *extra]
    cfg = load_pretrain_config(CONFIG, overrides)
    t0 = time.perf_counter()
    pretrain(cfg, workers=workers, progress=False)
    job_s = time.perf_counter() - t0
    stats = json.loads((out / "pretrain.json").read_text())["worker_stats"]
    if not stats or "train_s" not in stats[0]:
        raise RuntimeError(f"no throughput figures in {out}/pretrain.json (steps <= warmup?)")
    pos = sum(w["positions"] for w in stats)
    wall = max(w["train_s"] for w in stats)
    cpu = sum(w["train_cpu_s"] for w in stats)
    return {
        "workers": workers, "threads_per_worker": threads, "job_s": job_s,
        "timed_steps": stats[0]["timed_steps"], "positions": pos,
        "positions_per_s": pos / wall,
        "per_worker_positions_per_s": [w["positions"] / w["train_s"] for w in stats],
        "positions_per_cpu_s": pos / cpu,
        "peak_mib": [w["hwm_mib"] for w in stats],
        "batch_per_worker": cfg.data.batch_size,
    }


def describe(name: str, r: dict) -> str:
    return (f"{name}: {r['positions_per_s']:,.0f} positions/s wall "
            f"(per worker: {', '.join(f'{v:,.0f}' for v in r['per_worker_positions_per_s'])}); "
            f"{r['positions_per_cpu_s']:,.0f} positions per CPU-second; "
            f"peak per worker: {', '.join(f'{m / 1024:.2f} GiB' for m in r['peak_mib'])}; job {r['job_s']:.0f} s")


def compare_pipeline(data: Path, a) -> int:
    """2 workers, the same steps: Lightning's plain loop, then TrainPipelineSparseDist."""
    threads = max(a.cores // 2, 1)
    res = {}
    for mode in ("none", "sparse_dist"):
        r = run(data, Path(a.work) / mode, 2, threads, a.steps, [*a.overrides, f"distributed.train_pipeline={mode}"])
        res[mode] = r
        print(describe(f"2 workers, train_pipeline={mode}", r), flush=True)
    ratio = res["sparse_dist"]["positions_per_s"] / res["none"]["positions_per_s"]
    cpu = res["sparse_dist"]["positions_per_cpu_s"] / res["none"]["positions_per_cpu_s"]
    print(f"pipelined / plain: {ratio:.2f}x the wall throughput, {cpu:.2f}x per CPU-second")
    if a.json:
        Path(a.json).write_text(json.dumps({"arms": res, "ratio": ratio, "cpu_ratio": cpu}, indent=2))
    shutil.rmtree(a.work, ignore_errors=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=None)
    ap.add_argument("--steps", type=int, default=0, help="0: one epoch per arm (the same sequences)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench" / "pretrain-scaling"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--pipeline", action="store_true", help="2 workers: plain loop vs TrainPipelineSparseDist")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    if a.steps and a.steps <= WARMUP:
        sys.exit(f"--steps must exceed the {WARMUP} warm-up steps")

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    data = find_data(a.data)
    print(f"ML-1M at {data}; config {CONFIG.relative_to(ROOT)}; {f'{a.steps} steps' if a.steps else 'one epoch'} ({WARMUP} warm-up steps not timed) per arm; "
          f"{a.cores} cores in total per arm")
    if a.pipeline:
        return compare_pipeline(data, a)
    res = {}
    for n in (1, 2):
        r = run(data, Path(a.work) / f"{n}w", n, max(a.cores // n, 1), a.steps, a.overrides)
        res[n] = r
        print(f"{n} worker(s) x {r['threads_per_worker']} thread(s), batch {r['batch_per_worker']} per worker: "
              f"{r['positions_per_s']:,.0f} positions/s wall "
              f"(per worker: {', '.join(f'{v:,.0f}' for v in r['per_worker_positions_per_s'])}); "
              f"{r['positions_per_cpu_s']:,.0f} positions per CPU-second; "
              f"peak per worker: {', '.join(f'{m / 1024:.2f} GiB' for m in r['peak_mib'])}; "
              f"job {r['job_s']:.0f} s", flush=True)
    one, two = res[1], res[2]
    ratio = two["positions_per_s"] / (2 * one["positions_per_s"])
    same_hw = two["positions_per_s"] / one["positions_per_s"]
    cpu_ratio = two["positions_per_cpu_s"] / one["positions_per_cpu_s"]
    print(f"overhead ratio (2-worker / (2 x 1-worker) throughput): {ratio:.2f} "
          f"(ideal on these shared {a.cores} cores: 0.50)")
    print(f"  same cores, 2 workers vs 1: {same_hw:.2f}x the wall throughput; per CPU-second: {cpu_ratio:.2f}x "
          f"(< 1: the CPU work distribution adds per position; > 1: {a.cores} one-thread workers use a CPU-second "
          f"better than one {a.cores}-thread worker, whose intra-op threading costs more than the gloo collectives)")
    if a.json:
        Path(a.json).write_text(json.dumps({"arms": res, "overhead_ratio": ratio, "same_cores_ratio": same_hw,
                                            "cpu_ratio": cpu_ratio}, indent=2))
    shutil.rmtree(a.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
