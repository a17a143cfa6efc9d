"""`unirec serve`: the HTTP API over a bundle (one uvicorn worker, or Ray Serve replicas)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a bundle over HTTP (POST /recommend, /explain; GET /health, /metadata)")
    p.add_argument("--bundle", required=True, help="bundle directory from `unirec export`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--index", choices=["exact", "hnsw"], default="exact",
                   help="exact top-K (default) or an approximate HNSW index (recall@10 vs exact is measured and printed)")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW search breadth (recall/latency trade-off)")
    p.add_argument("--max-k", type=int, default=1000, help="largest k a request may ask for")
    p.add_argument("--max-history", type=int, default=2048, help="longest live history a request may send")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--access-log", action="store_true")
    p.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment instead of one uvicorn process")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (with --ray)")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (with --ray; default: start/attach locally)")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    from unirec_dist.errors import UnirecError

    if not 0 <= args.port <= 65535:
        raise UnirecError(f"--port must be in 0..65535, got {args.port}")
    if args.max_k < 1 or args.max_history < 1:
        raise UnirecError("--max-k and --max-history must be >= 1")
    if args.replicas < 1:
        raise UnirecError(f"--replicas must be >= 1, got {args.replicas}")
    if args.ef_search is not None and args.ef_search < 1:
        raise UnirecError(f"--ef-search must be >= 1, got {args.ef_search}")


def run(args: argparse.Namespace) -> int:
    _check(args)
    opts = {"index": args.index, "ef_search": args.ef_search, "max_k": args.max_k, "max_history": args.max_history}
    if args.ray:
        from unirec_dist.serving.ray_app import serve_blocking

        serve_blocking(args.bundle, host=args.host, port=args.port, replicas=args.replicas,
                       address=args.ray_address, threads=args.threads, **opts)
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from unirec_dist.serving.app import create_app
    from unirec_dist.serving.recommender import RECALL_K, Recommender
    from unirec_dist.serving.server import bind_socket, run as run_server

    sock = bind_socket(args.host, args.port)  # bind first: a taken port fails before the load
    rec = Recommender.from_bundle(args.bundle, **opts)
    if rec.index_recall is not None:
        print(f"approximate index {rec.index.kind} {rec.index.params()}: recall@{RECALL_K} vs exact = {rec.index_recall:.4f}")
    host, port = sock.getsockname()[:2]
    print(f"serving {args.bundle} on http://{host}:{port} (docs: /docs, schema: /openapi.json)", flush=True)
    run_server(create_app(rec), sock=sock, access_log=args.access_log)
    return 0
