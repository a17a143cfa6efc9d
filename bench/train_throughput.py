"""Training throughput, peak memory and time to quality of a pretrain config (default: the
SASRec ML-1M config) on this machine's CPU threads.

    python bench/train_throughput.py --config configs/pretrain/ml-1m-sasrec.yaml \
        [--threads 2] [--steps 60] [--time-to-quality 0.15 --max-minutes 30] [key=value ...]

Throughput = target positions (every position of every sequence that predicts a next item)
trained per second, measured over `--steps` optimizer steps after 3 warm-up steps, with the same
model/task/data code as `unirec train` (a plain loop: no progress bar or logger in the timing).
Peak memory = the process's max RSS. Time to quality = wall time from the start of the process
(data loading included) until validation NDCG@10 (full ranking over all items, all validation
users; seen items masked as the config's trainer.val_mask_seen says, true for the ML-1M configs as
in the published protocol) first reaches the threshold; validated after every epoch.

Baseline (RecBole 1.2.1 SASRec, same protocol, seq len 200, 2 CPU threads):
104 target positions/s, 9.8 GiB peak.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASE_POS_PER_S = 104.0
BASE_PEAK_GIB = 9.8


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KiB on Linux


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs/pretrain/ml-1m-sasrec.yaml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--time-to-quality", type=float, default=None, help="NDCG@10 threshold, e.g. 0.15")
    ap.add_argument("--max-minutes", type=float, default=30.0)
    ap.add_argument("--json", default=None, help="write the figures here too")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()

    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from unirec_dist.config.train import load_train_config
    from unirec_dist.metrics.evaluate import evaluate_table
    from unirec_dist.models.factory import build_from_config
    from unirec_dist.tasks.sequence import build_task
    from unirec_dist.training.data import SequenceBatches, open_prepared, read_valid, train_source
    from unirec_dist.utils.device import configure_cpu

    configure_cpu(a.threads)
    cfg = load_train_config(a.config, a.overrides)
    torch.manual_seed(cfg.trainer.seed)
    path, man = open_prepared(cfg.data.path)
    n_vocab = int(man["vocab_sizes"]["item"])
    source = train_source(path, cfg.data)
    batches = SequenceBatches(source, cfg.data.batch_size, cfg.data.max_len, seed=cfg.trainer.seed,
                              length_grouped=cfg.data.length_grouped, buffer_batches=cfg.data.buffer_batches)
    model = build_from_config(cfg, man)
    model.embedding.set_item_features(pq.read_table(path / "items.parquet"))
    task = build_task(cfg.task, man, source.item_counts(n_vocab))
    o = cfg.optim
    opt = torch.optim.Adam(model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    valid = read_valid(path, times=cfg.model.encoder.uses_times)
    model.train()

    def step(b) -> int:
        loss, _ = task.loss(model, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return int((b.seq["item"].lengths() - 1).clamp(min=0).sum())

    out: dict = {"config": a.config, "threads": a.threads, "overrides": a.overrides}
    # -- throughput --------------------------------------------------------------------------
    it = iter(batches)
    for _ in range(3):
        step(next(it))
    pos, t = 0, time.perf_counter()
    cpu0 = time.process_time()
    done = 0
    while done < a.steps:
        try:
            b = next(it)
        except StopIteration:
            it = iter(batches)
            continue
        pos += step(b)
        done += 1
    dt = time.perf_counter() - t
    out["steps"] = done
    out["positions_per_s"] = pos / dt
    out["positions_per_cpu_s"] = pos / max(time.process_time() - cpu0, 1e-9) * a.threads
    out["positions_per_epoch"] = int(sum((np.minimum(source.read(u).lengths, cfg.data.max_len + 1) - 1).sum()
                                         for u in source.units))
    out["epoch_s_est"] = out["positions_per_epoch"] / out["positions_per_s"]
    print(f"throughput: {out['positions_per_s']:,.0f} target positions/s on {a.threads} threads "
          f"({out['positions_per_s'] / BASE_POS_PER_S:,.0f}x RecBole's {BASE_POS_PER_S:.0f}); "
          f"~{out['epoch_s_est']:.0f} s/epoch ({out['positions_per_epoch']:,} positions)")
    # On a shared machine the wall-clock figure depends on other load; CPU time does not.
    print(f"  per CPU second x {a.threads} threads (what {a.threads} uncontended threads would do): "
          f"{out['positions_per_cpu_s']:,.0f} positions/s ({out['positions_per_cpu_s'] / BASE_POS_PER_S:,.0f}x)")
    # -- time to quality ---------------------------------------------------------------------
    if a.time_to_quality is not None:
        model = build_from_config(cfg, man)      # fresh model: the clock covers a whole run
        model.embedding.set_item_features(pq.read_table(path / "items.parquet"))
        opt = torch.optim.Adam(model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        t_start = time.perf_counter()
        hist = []
        reached = None
        epoch = 0
        while (time.perf_counter() - t_start) / 60 < a.max_minutes:
            model.train()
            batches.set_epoch(epoch)
            for b in batches:
                step(b)
            m = evaluate_table(model, valid, n_vocab - 1, ks=(10,), mask_seen=cfg.trainer.val_mask_seen,
                               progress=False)
            wall = time.perf_counter() - T0
            hist.append({"epoch": epoch + 1, "wall_s": round(wall, 1), "NDCG@10": m["NDCG@10"], "HR@10": m["HR@10"]})
            print(f"  epoch {epoch + 1}: val NDCG@10 {m['NDCG@10']:.4f} HR@10 {m['HR@10']:.4f} at {wall:.0f} s", flush=True)
            epoch += 1
            if m["NDCG@10"] >= a.time_to_quality:
                reached = hist[-1]
                break
        out["time_to_quality"] = {"threshold": a.time_to_quality, "reached": reached, "history": hist,
                                  "mask_seen": cfg.trainer.val_mask_seen}
        if reached:
            print(f"time to NDCG@10 >= {a.time_to_quality}: {reached['wall_s']:.0f} s "
                  f"({reached['wall_s'] / 60:.1f} min, {reached['epoch']} epochs; target < 30 min)")
        else:
            print(f"NDCG@10 >= {a.time_to_quality} not reached within {a.max_minutes} min")
    out["peak_gib"] = peak_gib()
    print(f"peak memory: {out['peak_gib']:.2f} GiB (RecBole {BASE_PEAK_GIB} GiB; target < 2 GiB)")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
