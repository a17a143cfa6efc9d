"""`unirec train --config configs/pretrain/<name>.yaml [--overwrite | --resume] [key=value ...]`: single-process training."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on a prepared dataset (one process, CPU or one GPU)")
    p.add_argument("--config", required=True, help="training YAML (see configs/pretrain/)")
    add_run_flags(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. trainer.max_epochs=3")
    p.set_defaults(func=run)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """--overwrite / --resume: what to do when trainer.out_dir already holds a run (train, finetune)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run in trainer.out_dir (its checkpoints, logs and metrics.json)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in trainer.out_dir from its newest checkpoint (model, optimizer, loop state)")


def run_exists_hint(e: Exception) -> Exception:
    """The library's RunExistsError worded with this command's flags."""
    from unirec_dist.errors import UnirecError

    return UnirecError(f"{e}; pass --overwrite to replace it or --resume to continue it")


def run(args: argparse.Namespace) -> int:
    from unirec_dist.config.train import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    from unirec_dist.training.checkpointing import RunExistsError
    from unirec_dist.training.train import train

    try:
        path = train(cfg, overwrite=args.overwrite, resume=args.resume)
    except RunExistsError as e:
        raise run_exists_hint(e) from None
    print(f"checkpoint: {path}")
    return 0
