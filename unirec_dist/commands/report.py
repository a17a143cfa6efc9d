"""`unirec report`: an HTML page with PNG figures for a train/pretrain/finetune run.

    unirec report RUN_DIR [--eval eval.json ...] [--recs recs.parquet] [--out DIR] [--overwrite]

Prints the path of the page (DIR/index.html; DIR defaults to RUN_DIR/report). See
`unirec_dist.report` for the figures and what each needs.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="HTML report with figures (curves, baseline, long tail) for a run")
    p.add_argument("run", metavar="RUN_DIR", help="a train/pretrain/finetune run folder (trainer.out_dir)")
    p.add_argument("--eval", action="append", metavar="JSON",
                   help="evaluation JSON (`unirec evaluate --out`), repeatable: e.g. the model's and the popularity "
                        "baseline's (default: RUN_DIR/eval.json if present)")
    p.add_argument("--recs", help="top-N lists (`unirec recommend --out`; default: RUN_DIR/recs.parquet if present)")
    p.add_argument("--out", help="report folder (default: RUN_DIR/report)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from unirec_dist.report import write_report

    page = write_report(args.run, out=args.out, evals=args.eval, recs_path=args.recs, overwrite=args.overwrite)
    print(f"report: {page}")
    return 0
