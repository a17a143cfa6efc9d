"""`unirec finetune --from CHECKPOINT --config configs/finetune/<name>.yaml [key=value ...]`."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a pretrained checkpoint on a target dataset (one process)")
    p.add_argument("--from", dest="source", required=True, metavar="CHECKPOINT",
                   help="pretrained checkpoint directory (written by any number of workers)")
    p.add_argument("--config", required=True, help="fine-tuning YAML (see configs/finetune/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.fraction=0.5")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unirec_dist.config.finetune import load_finetune_config

    cfg = load_finetune_config(args.config, args.overrides)
    from unirec_dist.training.finetune import finetune

    path = finetune(cfg, args.source)
    print(f"checkpoint: {path}")
    return 0
