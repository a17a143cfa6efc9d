"""`unirec explain`: a user's (or a live history's) recommendations with the history items behind each."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="recommend from a bundle and show which history items contributed most")
    p.add_argument("--bundle", required=True, help="bundle directory from `unirec export`")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a known user's raw id")
    who.add_argument("--history", help="comma-separated raw item ids, oldest first (a live session)")
    p.add_argument("-k", "--k", type=int, default=10, help="items to recommend and explain")
    p.add_argument("--top", type=int, default=5, help="history items listed per recommended item")
    p.add_argument("--method", choices=["auto", "occlusion", "similarity", "attention"], default="auto",
                   help="auto: attention rollout when the model exposes attention weights, else occlusion")
    p.add_argument("--items", default=None, help="comma-separated raw item ids to explain instead of the top-k")
    p.add_argument("--include-seen", action="store_true", help="allow items already in the history")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def _ids(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def run(args: argparse.Namespace) -> int:
    import json

    from unirec_dist.serving.display import label
    from unirec_dist.serving.recommender import Recommender

    rec = Recommender.from_bundle(args.bundle)
    ex = rec.explain(user_id=args.user, history=_ids(args.history), k=args.k, exclude_seen=not args.include_seen,
                     items=_ids(args.items), top=args.top, method=args.method)
    if args.json:
        print(json.dumps(ex.to_dict(), indent=2))
        return 0
    who = f"user {args.user}" if args.user is not None else "the given history"
    print(f"{who}: {ex.history_length} history items; method: {ex.method}"
          + ("" if ex.per_item else " (same weights for every item)"))
    for it in ex.items:
        print(f"{it.rank:>3}. {label(it.item, it.display)}  score {it.score:.4f}")
        for c in it.contributions:
            print(f"       {c.weight:+.4f}  {label(c.item, c.display)}  (history position {c.position})")
    return 0
