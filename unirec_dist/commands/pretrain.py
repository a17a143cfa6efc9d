"""`unirec pretrain --config configs/pretrain/<name>.yaml --workers N [--address HOST:PORT] [--overwrite | --resume] [key=value ...]`."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="distributed pretraining on Ray Train (sharded tables, N workers)")
    p.add_argument("--config", required=True, help="pretraining YAML (a training YAML, optionally with distributed:)")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers (default: distributed.workers)")
    p.add_argument("--address", default=None,
                   help="join this Ray cluster (host:port or ray://host:port); default: start a local one")
    p.add_argument("--resume-from", default=None, metavar="CHECKPOINT",
                   help="continue this pretraining checkpoint (any worker count/plan; distributed.resume_from)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run in trainer.out_dir (its checkpoints, logs, pretrain.json and Ray run folder)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in trainer.out_dir from its newest reported checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. trainer.max_epochs=3")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unirec_dist.config.distributed import load_pretrain_config
    from unirec_dist.errors import ConfigError, UnirecError

    cfg = load_pretrain_config(args.config, args.overrides)
    if args.resume_from:
        cfg.distributed.resume_from = args.resume_from
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {args.workers}")
    from unirec_dist.commands.train import run_exists_hint
    from unirec_dist.training.checkpointing import RunExistsError
    from unirec_dist.training.pretrain import WorkersFailedError, pretrain

    try:
        path = pretrain(cfg, workers=args.workers, address=args.address, progress=not args.no_progress,
                        verbose=getattr(args, "verbose", False), overwrite=args.overwrite, resume=args.resume)
    except RunExistsError as e:
        raise run_exists_hint(e) from None
    except WorkersFailedError as e:
        if not e.resumable:
            raise
        raise UnirecError(f"{e}; the same command with --resume continues from it") from None
    print(f"checkpoint: {path}")
    return 0
