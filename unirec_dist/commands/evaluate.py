"""`unirec evaluate`: full-ranking metrics of a checkpoint (or the popularity baseline).

    unirec evaluate --checkpoint runs/x/ckpt [--data DIR] [--split test] [--k 10,50,200]
                    [--mask-seen] [--per-user] [--out results.json] [--overwrite] [--workers N]
    unirec evaluate --baseline popularity --data DIR ...

Every input is checked before any work starts (dataset, checkpoint manifest and vocab, K,
output path); a mistake is one `error: ...` line and exit code 2. `--workers N` loads the
checkpoint's item table row-wise sharded over N Ray workers, each scoring its own rows
(`unirec_dist.training.distributed_eval`); the metrics are identical to one process's.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="full-ranking Recall/HR/NDCG/MRR/Precision/Coverage@K of a checkpoint or baseline")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="checkpoint directory (with manifest.json)")
    src.add_argument("--baseline", choices=["popularity"], help="evaluate a baseline instead of a checkpoint (needs --data)")
    p.add_argument("--data", help="prepared dataset directory (default: the one recorded in the checkpoint)")
    p.add_argument("--split", default="test", choices=["test", "valid"], help="query split (default: test)")
    p.add_argument("--k", default="10,50,200", help="comma-separated cut-offs K (default: 10,50,200)")
    p.add_argument("--mask-seen", action="store_true",
                   help="remove each query's history items from its ranking (default: not masked; the published ML-1M numbers mask them)")
    p.add_argument("--batch-size", type=int, default=1024, help="queries per batch (default: 1024)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is fastest on a busy machine)")
    p.add_argument("--per-user", action="store_true",
                   help="add each query's user, history length and NDCG@10 to --out (for `unirec report`)")
    add_worker_flags(p)
    p.add_argument("--out", help="also write the report as JSON to this file")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run)


def add_worker_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=None,
                   help="score on N Ray workers, the checkpoint's item table row-wise sharded over them "
                        "(default: this process)")
    p.add_argument("--address", default=None,
                   help="with --workers: join this Ray cluster (host:port); default: start a local one")


def check_worker_flags(args: argparse.Namespace) -> None:
    from unirec_dist.errors import UnirecError

    if args.workers is None:
        if args.address:
            raise UnirecError("--address needs --workers N")
        return
    if args.workers < 1:
        raise UnirecError(f"--workers must be >= 1, got {args.workers}")
    if not args.checkpoint:
        raise UnirecError("--workers shards a checkpoint's tables; give --checkpoint (baselines run in one process)")


def parse_ks(text: str) -> list[int]:
    from unirec_dist.errors import UnirecError

    try:
        ks = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise UnirecError(f"--k must be comma-separated positive integers, got {text!r}") from None
    if not ks or min(ks) <= 0:
        raise UnirecError(f"--k must be positive integers, got {text!r}")
    return sorted(set(ks))


def open_inputs(args: argparse.Namespace):
    """(dataset, checkpoint manifest or None): the checks shared by evaluate and recommend."""
    from unirec_dist.checkpoint.dcp import check_vocab, read_manifest
    from unirec_dist.data.dataset import PreparedDataset
    from unirec_dist.errors import UnirecError

    manifest = None
    if args.checkpoint:
        manifest = read_manifest(args.checkpoint)
    elif not args.baseline:
        raise UnirecError("give --checkpoint DIR or --baseline popularity")
    data = args.data
    if data is None:
        data = ((manifest or {}).get("dataset") or {}).get("path")
        if not data:
            raise UnirecError("--data is required (no dataset path recorded in the checkpoint)" if manifest else
                              "--data is required with --baseline")
    dataset = PreparedDataset.open(data)
    if manifest is not None:
        check_vocab(manifest, dataset.vocab_hash, str(args.checkpoint))
        encoder = ((manifest.get("config") or {}).get("model") or {}).get("encoder") or {}
        if encoder.get("time_bias") is True:   # the HSTU time bias (its config's `uses_times`)
            from unirec_dist.training.data import check_times

            # queries need each event's time: refused here in one line, not by the model mid-run
            check_times(dataset.root, dataset.manifest)
    return dataset, manifest


def load_scorer(args: argparse.Namespace, dataset):
    """The Retriever to rank with: the checkpoint's model or the popularity baseline."""
    if args.baseline == "popularity":
        from unirec_dist.metrics.evaluate import popularity

        return popularity(dataset)
    from unirec_dist.models.factory import load_retriever

    model, _ = load_retriever(args.checkpoint, dataset=dataset.manifest)
    return model


def run(args: argparse.Namespace) -> int:
    import json

    from unirec_dist.errors import UnirecError
    from unirec_dist.serving.topn import check_output_file

    ks = parse_ks(args.k)
    if args.per_user and 10 not in ks:
        raise UnirecError(f"--per-user reports NDCG@10: --k must include 10, got {args.k!r}")
    if args.batch_size <= 0:
        raise UnirecError(f"--batch-size must be positive, got {args.batch_size}")
    if args.threads is not None and args.threads <= 0:
        raise UnirecError(f"--threads must be positive, got {args.threads}")
    check_worker_flags(args)
    if args.out:
        check_output_file(args.out, args.overwrite)
    dataset, manifest = open_inputs(args)
    if not dataset.has_table(args.split):
        raise UnirecError(f"prepared dataset {dataset.root} has no {args.split} split "
                          f"(neither {args.split}.parquet nor a {args.split}/ folder of parts)")

    from unirec_dist.metrics.evaluate import evaluate, format_table
    from unirec_dist.utils.device import configure_cpu

    if args.workers is not None:
        from unirec_dist.training.distributed_eval import evaluate_sharded

        report = evaluate_sharded(args.checkpoint, dataset.root, args.workers, split=args.split, ks=ks,
                                  mask_seen=args.mask_seen, batch_size=args.batch_size, per_user=args.per_user,
                                  threads=args.threads, address=args.address)
    else:
        configure_cpu(args.threads)
        scorer = load_scorer(args, dataset)
        report = evaluate(scorer, dataset, split=args.split, ks=ks, mask_seen=args.mask_seen,
                          batch_size=args.batch_size, per_user=args.per_user)
    report["model"] = (
        {"baseline": args.baseline}
        if args.baseline
        else {"checkpoint": str(args.checkpoint), "step": (manifest or {}).get("step"), "epoch": (manifest or {}).get("epoch")}
    )
    report["dataset"] = {"path": str(dataset.root.resolve()), "name": dataset.name, "vocab_hash": dataset.vocab_hash}
    # a rating or CTR checkpoint's pointwise metrics need the whole model in this process: the
    # one-process path only (--workers scores retrieval only)
    if manifest is not None and args.workers is None:
        from unirec_dist.metrics.tasks import checkpoint_pointwise_metrics

        pointwise = checkpoint_pointwise_metrics(scorer, manifest, dataset, args.split, args.batch_size)
        if pointwise:   # a rating or CTR checkpoint: its heads' metrics on each query's first target
            report["pointwise"] = pointwise
    title = f"{args.baseline} baseline" if args.baseline else f"checkpoint {args.checkpoint}"
    print(format_table(report, title=f"{title} on {dataset.name}"))
    if report.get("pointwise"):
        print("pointwise (first target per query): " + "  ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in report["pointwise"].items()))
    print(f"({report['seconds']:.2f} s)")
    for w in report.get("workers", []):
        print(f"worker {w['rank']}: peak memory {w.get('hwm_mib', float('nan')):,.0f} MiB; table rows held: "
              + ", ".join(f"{n} {t['rows']:,} from {t['row_offset']:,}" for n, t in sorted(w["tables"].items())))
    if args.out:
        from pathlib import Path

        from unirec_dist.serving.topn import write_text_atomic

        write_text_atomic(json.dumps(report, indent=2, sort_keys=True), Path(args.out))
        print(f"wrote {args.out}")
    return 0
