"""`unirec finetune --from CHECKPOINT --config configs/finetune/<name>.yaml [--overwrite | --resume] [key=value ...]`."""
from __future__ import annotations

import argparse

from unirec_dist.commands.train import add_run_flags, run_exists_hint


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a pretrained checkpoint on a target dataset (one process)")
    p.add_argument("--from", dest="source", required=True, metavar="CHECKPOINT",
                   help="pretrained checkpoint: a step folder, a pointer (runs/x/checkpoints/final) or a run's "
                        "checkpoints folder (written by any number of workers)")
    p.add_argument("--config", required=True, help="fine-tuning YAML (see configs/finetune/)")
    add_run_flags(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.fraction=0.5")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unirec_dist.config.finetune import load_finetune_config

    cfg = load_finetune_config(args.config, args.overrides)
    from unirec_dist.training.checkpointing import RunExistsError
    from unirec_dist.training.finetune import finetune

    try:
        path = finetune(cfg, args.source, overwrite=args.overwrite, resume=args.resume)
    except RunExistsError as e:
        raise run_exists_hint(e) from None
    print(f"checkpoint: {path}")
    return 0
