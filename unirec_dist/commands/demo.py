"""`unirec demo`: the main job end to end on the embedded default (MovieLens-100K, CPU).

It runs every stage that exists, in order, into one run directory, and prints a summary of each.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job end to end on MovieLens-100K (fetch, prepare, 2-worker pretrain, fine-tune, evaluate, top-N, export)")
    p.add_argument("--out", default="runs/demo", help="run directory (replaced if it exists)")
    p.add_argument("--dataset-config", default=None, help="dataset YAML (default: the packaged ml-100k config)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="pretraining config overrides, e.g. trainer.max_epochs=2")
    p.add_argument("--finetune", dest="finetune_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fine-tuning config override (repeatable), e.g. --finetune trainer.max_epochs=1")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers for pretraining (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unirec_dist.demo import run_demo

    run_demo(args.out, dataset_config=args.dataset_config, train_overrides=args.overrides,
             finetune_overrides=args.finetune_overrides, workers=args.workers)
    return 0
