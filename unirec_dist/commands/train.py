"""`unirec train --config configs/pretrain/<name>.yaml [key=value ...]`: single-process training."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on a prepared dataset (one process, CPU or one GPU)")
    p.add_argument("--config", required=True, help="training YAML (see configs/pretrain/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. trainer.max_epochs=3")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unirec_dist.config.train import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    from unirec_dist.training.train import train

    path = train(cfg)
    print(f"checkpoint: {path}")
    return 0
