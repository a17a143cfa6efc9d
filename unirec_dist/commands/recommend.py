"""`unirec recommend`: top-N items per user as Parquet (user, rank, item, score; raw ids; then the
item's display fields, e.g. title and genres, as optional string columns).

    unirec recommend --checkpoint runs/x/ckpt --users 1,2,3 --k 10 --out recs.parquet
    unirec recommend --checkpoint runs/x/ckpt --users @users.txt --k 10 --out recs.parquet
    unirec recommend --checkpoint runs/x/ckpt --all-users --k 50 --out recs.parquet
    unirec recommend --baseline popularity --data DIR --all-users --k 10 --out recs.parquet
    unirec recommend --checkpoint runs/x/ckpt --all-users --k 10 --out recs.parquet --workers 2

--workers N: the checkpoint's item table row-wise sharded over N Ray workers, each scoring its
own rows; the lists are identical to one process's and rank 0 writes the file.

Items a user already interacted with are excluded unless --include-seen. Every input is checked
before any work starts (unknown user ids are listed in one error line, exit code 2).
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from unirec_dist.commands.evaluate import add_worker_flags

    p = sub.add_parser("recommend", help="top-N items per user (raw ids) as a Parquet file")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="checkpoint directory (with manifest.json)")
    src.add_argument("--baseline", choices=["popularity"], help="recommend with a baseline instead (needs --data)")
    p.add_argument("--data", help="prepared dataset directory (default: the one recorded in the checkpoint)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--users", help="raw user ids: comma-separated, or @FILE with one id per line")
    who.add_argument("--all-users", action="store_true", help="every user of the dataset")
    p.add_argument("--k", default="10", help="items per user (default: 10)")
    p.add_argument("--include-seen", action="store_true", help="allow items the user already interacted with")
    p.add_argument("--batch-size", type=int, default=1024, help="users per batch (default: 1024)")
    p.add_argument("--at", type=int, default=None,
                   help="query time in seconds since 1970, read by a model with a time bias (default: now)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is fastest on a busy machine)")
    add_worker_flags(p)
    p.add_argument("--display-fields", default=None, metavar="A,B",
                   help="raw item columns added beside each item (default: title,genres where the dataset "
                        "has them; '' for none)")
    p.add_argument("--out", required=True, help="output Parquet file")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def parse_k(text: str) -> int:
    from unirec_dist.errors import UnirecError

    try:
        k = int(text)
    except (TypeError, ValueError):
        raise UnirecError(f"--k must be a positive integer, got {text!r}") from None
    if k <= 0:
        raise UnirecError(f"--k must be a positive integer, got {k}")
    return k


def parse_users(text: str) -> list[str]:
    """`a,b,c` or `@file` (one id per line; blank lines ignored) -> raw ids in order."""
    from pathlib import Path

    from unirec_dist.errors import DataError

    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise DataError(f"--users file {path} does not exist")
        ids = [line.strip() for line in path.read_text().splitlines()]
    else:
        ids = [x.strip() for x in text.split(",")]
    ids = [x for x in ids if x]
    if not ids:
        raise DataError(f"--users {text!r} names no user id")
    return ids


def run(args: argparse.Namespace) -> int:
    from unirec_dist.commands.evaluate import check_worker_flags, load_scorer, open_inputs
    from unirec_dist.errors import UnirecError
    from unirec_dist.serving.display import parse_fields, resolve_fields
    from unirec_dist.serving.topn import all_users, check_output_file, recommend, resolve_users, write_parquet_atomic

    k = parse_k(args.k)
    if args.batch_size <= 0:
        raise UnirecError(f"--batch-size must be positive, got {args.batch_size}")
    if args.threads is not None and args.threads <= 0:
        raise UnirecError(f"--threads must be positive, got {args.threads}")
    if not args.users and not args.all_users:
        raise UnirecError("give --users ID,ID,... (or @FILE) or --all-users")
    users = parse_users(args.users) if args.users else None
    check_worker_flags(args)
    check_output_file(args.out, args.overwrite)
    dataset, _ = open_inputs(args)
    fields = resolve_fields(dataset, parse_fields(args.display_fields))   # before the model is loaded
    if users is not None:
        resolve_users(dataset, users)  # unknown ids fail here, before the model is loaded
    seen = "seen items included" if args.include_seen else "seen items excluded"
    if args.workers is not None:
        from unirec_dist.training.distributed_eval import recommend_sharded

        # users None: every worker lists the dataset's users itself
        done = recommend_sharded(args.checkpoint, dataset.root, args.workers, users, k, args.out,
                                 exclude_seen=not args.include_seen, batch_size=args.batch_size, threads=args.threads,
                                 address=args.address, display_fields=fields)
        print(f"wrote {done['rows']:,} rows (top-{k} for {done['users']:,} users, {seen}; "
              f"{args.workers} workers) to {args.out}")
        return 0
    if users is None:
        users = all_users(dataset)
    from unirec_dist.utils.device import configure_cpu

    configure_cpu(args.threads)
    scorer = load_scorer(args, dataset)
    if args.at is not None and args.at < 0:
        raise UnirecError(f"--at must be seconds since 1970 (>= 0), got {args.at}")
    table = recommend(scorer, dataset, users, k, exclude_seen=not args.include_seen, batch_size=args.batch_size,
                      display_fields=fields, at=args.at)
    write_parquet_atomic(table, args.out)
    print(f"wrote {table.num_rows:,} rows (top-{k} for {len(users):,} users, {seen}) to {args.out}")
    return 0
