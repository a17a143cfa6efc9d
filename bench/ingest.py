"""Training ingestion: streamed (each worker reads its share of the train row groups every epoch)
against in-memory (the train rows read once and kept), on the same data and config.

    python bench/ingest.py --data PREPARED_DIR [--config configs/pretrain/ml-1m-sasrec.yaml]
        [--workers 2] [--epochs 3] [--steps 40] [key=value ...]

For each mode, in its own subprocess (clean peak RSS), as rank 0 of `--workers`:
- loader: wall seconds per epoch of building every batch of the rank's share, and batches/s;
- training: target positions/s over `--steps` optimizer steps of the config's model (loader
  included, after 3 warm-up steps), the same model/task code as `unirec train`;
- peak RSS of the process.
Then prints the streamed/in-memory ratios (target: training positions/s >= 0.9x).
Modes alternate (memory, stream, memory, stream) and the better of the two runs of each is kept,
so that other load on the machine does not favour one side.
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


def one(a: argparse.Namespace, mode: str) -> dict:
    import numpy as np
    import torch

    from unirec_dist.config.train import load_train_config
    from unirec_dist.models.factory import build_from_config
    from unirec_dist.tasks.sequence import build_task
    from unirec_dist.training.data import SequenceBatches, open_prepared, train_source
    from unirec_dist.utils.device import configure_cpu

    configure_cpu(a.threads)
    cfg = load_train_config(a.config, [f"data.path={a.data}", f"data.ingest={mode}", *a.overrides])
    torch.manual_seed(cfg.trainer.seed)
    path, man = open_prepared(cfg.data.path)
    t0 = time.perf_counter()
    source = train_source(path, cfg.data)
    n_vocab = int(man["vocab_sizes"]["item"])
    counts = source.item_counts(n_vocab)
    setup_s = time.perf_counter() - t0

    def batches(epoch: int) -> SequenceBatches:
        sb = SequenceBatches(source, cfg.data.batch_size, cfg.data.max_len, seed=cfg.trainer.seed,
                             length_grouped=cfg.data.length_grouped, rank=0, world_size=a.workers,
                             buffer_batches=cfg.data.buffer_batches)
        sb.set_epoch(epoch)
        return sb

    per_epoch = []
    for e in range(a.epochs):
        t = time.perf_counter()
        n = sum(1 for _ in batches(e))
        per_epoch.append(time.perf_counter() - t)
    model = build_from_config(cfg, man)
    import pyarrow.parquet as pq

    model.embedding.set_item_features(pq.read_table(path / "items.parquet"))
    task = build_task(cfg.task, man, counts)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    model.train()
    it, e = iter(batches(0)), 0
    pos = done = 0
    t = None
    while done < a.steps + 3:
        try:
            b = next(it)
        except StopIteration:
            e += 1
            it = iter(batches(e))
            continue
        loss, _ = task.loss(model, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
        if done == 3:
            t = time.perf_counter()
        elif done > 3:
            pos += int((b.seq["item"].lengths() - 1).clamp(min=0).sum())
    return {"mode": mode, "in_memory": source.in_memory, "setup_s": setup_s, "batches_per_epoch": n,
            "loader_epoch_s": float(np.min(per_epoch)), "loader_batches_per_s": n / float(np.min(per_epoch)),
            "train_positions_per_s": pos / (time.perf_counter() - t),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="a prepared dataset directory")
    ap.add_argument("--config", default=str(ROOT / "configs/pretrain/ml-1m-sasrec.yaml"))
    ap.add_argument("--workers", type=int, default=2, help="the share is rank 0's of this many workers")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    if a.mode:
        print(json.dumps(one(a, a.mode)))
        return 0
    runs: dict[str, list[dict]] = {"memory": [], "stream": []}
    for mode in ("memory", "stream", "memory", "stream"):
        cmd = [sys.executable, __file__, "--mode", mode, "--data", a.data, "--config", a.config,
               "--workers", str(a.workers), "--epochs", str(a.epochs), "--steps", str(a.steps),
               "--threads", str(a.threads), *a.overrides]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = {m: max(r, key=lambda x: x["train_positions_per_s"]) for m, r in runs.items()}
    for m in ("memory", "stream"):
        r = best[m]
        print(f"{m:>6}: loader {r['loader_epoch_s']:.3f} s/epoch ({r['loader_batches_per_s']:,.0f} batches/s, "
              f"{r['batches_per_epoch']} batches), training {r['train_positions_per_s']:,.0f} positions/s, "
              f"setup {r['setup_s']:.2f} s, peak RSS {r['peak_rss_gib']:.2f} GiB")
    m, s = best["memory"], best["stream"]
    print(f"streamed / in-memory: training positions/s {s['train_positions_per_s'] / m['train_positions_per_s']:.3f}x "
          f"(target >= 0.9x), loader epoch time {s['loader_epoch_s'] / m['loader_epoch_s']:.2f}x, "
          f"peak RSS {s['peak_rss_gib'] / m['peak_rss_gib']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
