"""`unirec export`: a training checkpoint -> a self-contained serving bundle."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint to a serving bundle (weights, item vectors, vocabs)")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (DCP + manifest.json)")
    p.add_argument("--out", required=True, help="bundle directory to write (atomically)")
    p.add_argument("--dataset", default=None, help="prepared dataset (default: the one the checkpoint names)")
    p.add_argument("--ann", choices=["none", "hnsw"], default="none",
                   help="also prebuild an approximate index into the bundle (for very large catalogues)")
    p.add_argument("--hnsw-m", type=int, default=32, help="HNSW graph degree M")
    p.add_argument("--hnsw-ef-construction", type=int, default=100)
    p.add_argument("--hnsw-ef-search", type=int, default=128)
    p.add_argument("--display-fields", default=None, metavar="A,B",
                   help="raw item columns shown beside ids in answers (default: title,genres where the "
                        "dataset has them; '' for none)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from unirec_dist.checkpoint.export import export_bundle
    from unirec_dist.serving.display import parse_fields

    hnsw = None
    if args.ann == "hnsw":
        hnsw = {"M": args.hnsw_m, "ef_construction": args.hnsw_ef_construction, "ef_search": args.hnsw_ef_search}
    out = export_bundle(args.checkpoint, args.out, dataset=args.dataset, overwrite=args.overwrite, hnsw=hnsw,
                        display_fields=parse_fields(args.display_fields))
    m = json.loads((out / "manifest.json").read_text())
    print(f"bundle {out}: {m['counts']['items']} items, {m['counts']['users']} users, dim {m['model']['dim']}, "
          f"model {m['model'].get('encoder') or m['model'].get('class')}" + (", hnsw index" if hnsw else "")
          + (f", display fields {', '.join(m['display']['fields'])}" if m.get("display") else ""))
    return 0
