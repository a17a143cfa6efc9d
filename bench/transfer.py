"""Transfer, measured: pretrain on a source (default ML-1M), fine-tune on a target (default
ML-100K), against the same model trained from scratch on the target with the same budget, at
10%, 50% and 100% of the target's training users.

    python bench/transfer.py [--out runs/transfer] [--source DIR] [--target DIR]
                             [--align title,year | --align raw_id] [--min-overlap 0.5]
                             [--pretrain-epochs 15] [--epochs 20] [--seeds 42,43,44]
                             [--fractions 0.1,0.5,1.0] [--max-len 50] [--pretrained CKPT]

--target is any prepared dataset (the default prepares ML-100K); --align names the item-table
columns that identify an item in both datasets (init.align=column, titles normalised by
data/align.normalise_title) or `raw_id`; --min-overlap is init.min_overlap. The target, its
size and the alignment are printed before any arm runs; too little overlap is one `error:` line
(exit 2).

Both arms: the architecture of the pretrained checkpoint (SASRec, 2 blocks, dim 50, item vector
= id + content embedding of title tokens, genres, year; max_len --max-len), the recipe of
configs/finetune/ml-100k-from-ml-1m.yaml (sampled softmax, 128 negatives, Adam lr 1e-3), the same
seed, the same subset of training users, --epochs epochs with validation NDCG@10 after each and
the best epoch's checkpoint evaluated on test (selection by validation NDCG@10, not masked).
The fine-tune arm starts from the source weights aligned per --align; the scratch arm from the
default init (init.scratch=true), everything else identical. Protocol: leave-one-out, full
ranking over all target items, test history = train + valid item, ALL test users (also those
whose histories were left out of training); every figure both with seen items NOT masked and
masked (the latter is generative-recommenders' protocol).

Data: ML-1M and ML-100K are fetched (`unirec data fetch`) and prepared into OUT/data unless
--source/--target point at prepared directories. The pretrained checkpoint is cached at
OUT/pretrain (reused on a second run; --pretrained to bring your own).
Each (fraction, arm) runs once per --seeds seed (the seed also draws the subset of users, the same
for both arms); the table gives the mean and std over seeds and how many seeds fine-tuning wins.
Budget (default flags): 15 ML-1M epochs (max_len 50, ~6 min) + 18 x 20 ML-100K epochs (~4 min);
the run prints its wall time.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _prepared(path: str | None, name: str, out: Path) -> Path:
    from unirec_dist.config.dataset import DatasetConfig
    from unirec_dist.config.loader import load_config
    from unirec_dist.data.prepare import prepare

    if path:
        return Path(path)
    d = out / "data" / name
    if not (d / "manifest.json").is_file():
        prepare(load_config(DatasetConfig, ROOT / "configs" / "datasets" / f"{name}.yaml"), d)
    return d


def pretrain(ml1m: Path, out: Path, epochs: int, max_len: int) -> Path:
    from unirec_dist.config.train import load_train_config
    from unirec_dist.training.train import train

    ckpt = out / "pretrain" / "checkpoints" / "last"
    if (ckpt / "manifest.json").is_file():
        print(f"reusing pretrained checkpoint {ckpt}", flush=True)
        return ckpt
    cfg = load_train_config(ROOT / "configs/pretrain/ml-1m-sasrec.yaml", [
        f"data.path={ml1m}", f"data.max_len={max_len}", "data.batch_size=64", "data.valid_max_users=1000",
        "model.embedding.item_features=['*']", "optim.lr=0.002", f"trainer.max_epochs={epochs}",
        f"trainer.val_every_n_epochs={epochs}", "trainer.early_stop_patience=null", "trainer.progress_bar=false",
        f"trainer.out_dir={out / 'pretrain'}"])
    train(cfg, overwrite=True)
    return ckpt


def align_overrides(align: str, min_overlap: float) -> list[str]:
    """--align / --min-overlap as finetune config overrides."""
    if align == "raw_id":
        spec = ["init.align=raw_id"]
    else:
        cols = [c.strip() for c in align.split(",") if c.strip()]
        spec = ["init.align=column", "init.align_column=[" + ",".join(cols) + "]"]
    return [*spec, f"init.min_overlap={min_overlap}"]


def finetune_config(target: Path, run: Path, align: list[str], extra: list[str]):
    from unirec_dist.config.finetune import load_finetune_config

    return load_finetune_config(ROOT / "configs/finetune/ml-100k-from-ml-1m.yaml", [
        f"data.path={target}", *align, "trainer.early_stop_patience=null", "trainer.progress_bar=false",
        "trainer.loggers=[]", f"trainer.out_dir={run}", *extra])


def run_arm(ckpt: Path, target: Path, out: Path, fraction: float, epochs: int, scratch: bool, seed: int,
            align: list[str]) -> dict:
    from unirec_dist.metrics.tasks import evaluate_checkpoint
    from unirec_dist.training.finetune import finetune

    arm = "scratch" if scratch else "finetune"
    run = out / f"{arm}-{fraction:g}-seed{seed}"
    cfg = finetune_config(target, run, align, [f"data.fraction={fraction}", f"init.scratch={str(scratch).lower()}",
                                               f"trainer.max_epochs={epochs}", f"trainer.seed={seed}"])

    t0 = time.perf_counter()
    result = finetune(cfg, ckpt, overwrite=True)
    m = json.loads((run / "metrics.json").read_text())
    masked = evaluate_checkpoint(result, "test", mask_seen=True)
    return {"arm": arm, "fraction": fraction, "seed": seed, "train_users": m["train_users"], "test": m["test"],
            "test_masked": masked,
            "best_val_NDCG@10": (m["best_val"] or {}).get("NDCG@10"), "seconds": round(time.perf_counter() - t0, 1),
            "alignment": m["alignment"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "runs" / "transfer"))
    ap.add_argument("--source", default=None, help="prepared pretraining dataset (default: ML-1M, prepared into OUT/data)")
    ap.add_argument("--target", default=None, help="prepared target dataset (default: ML-100K, prepared into OUT/data)")
    ap.add_argument("--align", default="title,year",
                    help="item-table columns that identify an item in both datasets, or raw_id (default: title,year)")
    ap.add_argument("--min-overlap", type=float, default=0.5, help="init.min_overlap (default: 0.5)")
    ap.add_argument("--pretrained", default=None, help="an ML-1M checkpoint to use instead of pretraining")
    ap.add_argument("--pretrain-epochs", type=int, default=15)
    ap.add_argument("--epochs", type=int, default=20, help="fine-tune / scratch epochs (both arms)")
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--fractions", default="0.1,0.5,1.0")
    ap.add_argument("--seeds", default="42,43,44",
                    help="fine-tune seeds (each also picks its own subset of users, the same for both arms)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    from unirec_dist.errors import UnirecError
    from unirec_dist.utils.logging import setup_cli_logging

    setup_cli_logging()
    try:
        return run(a)
    except UnirecError as e:     # a user mistake (e.g. too little overlap) is one line, as in the CLI
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(a: argparse.Namespace) -> int:
    from unirec_dist.data.dataset import PreparedDataset
    from unirec_dist.training.finetune import plan_finetune

    t0 = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    source = _prepared(a.source, "ml-1m", out)
    target = _prepared(a.target, "ml-100k", out)
    tds = PreparedDataset.open(target)
    align = align_overrides(a.align, a.min_overlap)
    print(f"target: {tds.name} ({target}): {tds.n_users:,} users, {tds.n_items:,} items; source {source}; "
          f"align {a.align}, min overlap {a.min_overlap:.0%}", flush=True)
    ckpt = Path(a.pretrained) if a.pretrained else pretrain(source, out, a.pretrain_epochs, a.max_len)
    # the alignment, checked once before any arm trains (too little overlap: one error line)
    al = plan_finetune(finetune_config(target, out / "plan", align, []), ckpt).stats
    print(f"aligned {al['items']['matched']:,} of {al['items']['rows']:,} {tds.name} items "
          f"({al['items']['overlap']:.1%}) by {a.align}", flush=True)
    t_pre = time.perf_counter() - t0
    rows = []
    fractions = [float(x) for x in a.fractions.split(",")]
    seeds = [int(x) for x in a.seeds.split(",")]
    for f in fractions:
        for seed in seeds:
            for scratch in (True, False):
                r = run_arm(ckpt, target, out, f, a.epochs, scratch, seed, align)
                rows.append(r)
                print(f"  {r['arm']:<8} fraction {f:g} seed {seed}: test NDCG@10 {r['test']['NDCG@10']:.4f} "
                      f"HR@10 {r['test']['HR@10']:.4f}; seen masked {r['test_masked']['NDCG@10']:.4f} "
                      f"{r['test_masked']['HR@10']:.4f} ({r['seconds']:.0f} s)", flush=True)
    wall = time.perf_counter() - t0
    al = rows[-1]["alignment"]
    print()
    sname = PreparedDataset.open(source).name if not a.pretrained else "checkpoint " + str(ckpt)
    print(f"Transfer {sname} -> {tds.name} ({target}; items aligned by {a.align}: "
          f"{al['items']['matched']:,} of {al['items']['rows']:,} {tds.name} items = {al['items']['overlap']:.1%}, "
          f"{al['items']['new']} new)")
    print(f"protocol: leave-one-out, full ranking over {al['items']['rows']:,} items, all test users; "
          f"best-by-valid epoch of {a.epochs}; mean (std) over seeds {a.seeds}; wins = seeds where fine-tune "
          "beats scratch on NDCG@10; "
          + (f"pretrained checkpoint {ckpt}" if a.pretrained else f"pretrain {a.pretrain_epochs} epochs on {sname}"))
    table = []
    for key, label in (("test", "seen items NOT masked"), ("test_masked", "seen items masked")):
        print(f"\n{label}")
        head = (f"{'fraction':>8} {'users':>6} | {'scratch NDCG@10':>16} {'HR@10':>7} | {'finetune NDCG@10':>16} "
                f"{'HR@10':>7} | {'gain NDCG':>9} {'gain HR':>8} {'wins':>5}")
        print(head)
        print("-" * len(head))
        for f in fractions:
            arms = {arm: [r for r in rows if r["fraction"] == f and r["arm"] == arm] for arm in ("scratch", "finetune")}
            stat = {arm: {m: (float(np.mean([r[key][m] for r in rs])), float(np.std([r[key][m] for r in rs])))
                          for m in ("NDCG@10", "HR@10")} for arm, rs in arms.items()}
            wins = sum(t[key]["NDCG@10"] > s_[key]["NDCG@10"] for s_, t in zip(arms["scratch"], arms["finetune"]))
            (sn, sd), (sh, _) = stat["scratch"]["NDCG@10"], stat["scratch"]["HR@10"]
            (tn, td), (th, _) = stat["finetune"]["NDCG@10"], stat["finetune"]["HR@10"]
            gn = (tn - sn) / sn if sn else float("inf")
            gh = (th - sh) / sh if sh else float("inf")
            table.append({"protocol": label, "fraction": f, "train_users": arms["scratch"][0]["train_users"],
                          "scratch": stat["scratch"], "finetune": stat["finetune"], "gain_NDCG@10": gn,
                          "gain_HR@10": gh, "wins": wins, "seeds": len(seeds)})
            print(f"{f:>8.0%} {arms['scratch'][0]['train_users']:>6} | {sn:>8.4f} ({sd:.4f}) {sh:>7.4f} | "
                  f"{tn:>7.4f} ({td:.4f}) {th:>7.4f} | {gn:>+9.1%} {gh:>+8.1%} {wins:>3}/{len(seeds)}")
    print(f"wall time {wall / 60:.1f} min (pretraining {t_pre / 60:.1f} min)")
    if a.json:
        Path(a.json).write_text(json.dumps({"table": table, "runs": rows, "seconds": round(wall, 1),
                                            "pretrain_seconds": round(t_pre, 1), "args": vars(a),
                                            "target": {"name": tds.name, "path": str(target)}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
