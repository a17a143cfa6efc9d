"""`unirec prepare --config configs/datasets/<name>.yaml [--out DIR]`: raw log -> prepared dataset."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="clean, encode, sequence and split a dataset (see data/format.py)")
    p.add_argument("--config", required=True, help="dataset YAML (configs/datasets/*.yaml)")
    p.add_argument("--out", default=None, help="output dir (default data/prepared/<name>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output dir")
    p.add_argument("--engine", choices=["arrow", "ray"], default="arrow",
                   help="arrow: one process; ray: Ray Data (local, or --ray-address)")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local one)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. filter.user_core=5")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from unirec_dist.config.dataset import DatasetConfig
    from unirec_dist.config.loader import load_config
    from unirec_dist.data.dataset import PreparedDataset
    from unirec_dist.data.prepare import OutputOverInputError, prepare
    from unirec_dist.errors import UnirecError

    cfg = load_config(DatasetConfig, args.config, args.overrides)
    out = Path(args.out) if args.out else Path("data/prepared") / cfg.name
    try:
        prepare(cfg, out, overwrite=args.overwrite, engine=args.engine, ray_address=args.ray_address)
    except OutputOverInputError as e:
        raise UnirecError(f"--out: {e}") from None
    print(summary(PreparedDataset.open(out)))
    return 0


def summary(ds) -> str:
    m = ds.manifest
    c = m["counts"]
    k = c["after_kcore"]
    sp = m["split"]
    lines = [
        f"prepared {m['name']} -> {ds.root}",
        f"  rows: raw {c['raw']:,}; dropped: null ids {c['dropped_null_ids']:,}, null timestamps "
        f"{c['dropped_null_timestamps']:,}, duplicates {c['dropped_duplicates']:,}, rating filter "
        f"{c['dropped_rating_filter']:,}, k-core {k['dropped']:,} ({k['iterations']} rounds); final {c['final']:,}",
        f"  users {ds.n_users:,}, items {ds.n_items:,}; split {sp['protocol']}: train {sp['users']['train']:,}, "
        f"valid {sp['users']['valid']:,}, test {sp['users']['test']:,} users",
    ]
    from unirec_dist.data.prepare import describe_ordering

    lines.append("  " + describe_ordering(sp))
    if m["features"]:
        lines.append("  features: " + ", ".join(f"{f['name']} ({f['kind']}, {f.get('cardinality', f.get('dim'))})"
                                                for f in m["features"]))
    return "\n".join(lines)
