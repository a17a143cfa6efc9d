"""`unirec serve --bundle BUNDLE [--config configs/serve/X.yaml] [flags] [key=value ...]`: the HTTP
API over a bundle, as one uvicorn worker or as Ray Serve replicas (config `ray:` or --ray)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a bundle over HTTP (POST /recommend, /explain; GET /health, /metadata)")
    p.add_argument("--bundle", default=None, help="bundle directory from `unirec export` (or `bundle:` in --config)")
    p.add_argument("--config", default=None, help="serving YAML (see configs/serve/); flags override it")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--index", choices=["exact", "hnsw"], default=None,
                   help="exact top-K (default) or an HNSW index (its recall@10 vs exact is measured and printed)")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW search breadth (recall/latency trade-off)")
    p.add_argument("--max-k", type=int, default=None, help="largest k a request may ask for (default 1000)")
    p.add_argument("--max-history", type=int, default=None, help="longest live history accepted (default 2048)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--access-log", action="store_true", default=None)
    p.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment (same as a `ray:` config section)")
    p.add_argument("--replicas", type=int, default=None, help="Ray Serve replicas (implies --ray)")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (implies --ray; default: start locally)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. hnsw.ef_search=256")
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace):
    """The ServeConfig from --config and key=value overrides, then flags (flags win)."""
    from unirec_dist.config.loader import load_config
    from unirec_dist.errors import ConfigError
    from unirec_dist.serving.config import RayServeConfig, ServeConfig

    cfg = load_config(ServeConfig, args.config, args.overrides)
    flags = {"bundle": args.bundle, "host": args.host, "port": args.port, "index": args.index,
             "ef_search": args.ef_search, "max_k": args.max_k, "max_history": args.max_history,
             "threads": args.threads, "access_log": args.access_log}
    for key, value in flags.items():
        if value is not None:
            setattr(cfg, key, value)
    if args.ray or args.replicas is not None or args.ray_address is not None:
        cfg.ray = cfg.ray or RayServeConfig()
        if args.replicas is not None:
            cfg.ray.replicas = args.replicas
        if args.ray_address is not None:
            cfg.ray.address = args.ray_address
        cfg.ray.validate()
    cfg.validate()
    if not cfg.bundle:
        raise ConfigError("no bundle: pass --bundle DIR (or set bundle: in --config)")
    return cfg


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    opts = cfg.recommender_options()
    if cfg.ray is not None:
        from unirec_dist.serving.ray_app import serve_blocking

        serve_blocking(cfg.bundle, host=cfg.host, port=cfg.port, replicas=cfg.ray.replicas,
                       address=cfg.ray.address, cpus_per_replica=cfg.ray.cpus_per_replica,
                       threads=cfg.threads, max_body_bytes=cfg.max_body_bytes, batching=cfg.batching, **opts)
        return 0
    from unirec_dist.utils.device import configure_cpu

    configure_cpu(cfg.threads or None)
    from unirec_dist.serving.app import create_app
    from unirec_dist.serving.recommender import RECALL_K, Recommender
    from unirec_dist.serving.server import bind_socket, run as run_server

    try:
        sock = bind_socket(cfg.host, cfg.port)  # bind first: a taken port fails before the load
    except OSError as e:
        from unirec_dist.errors import UnirecError

        raise UnirecError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}") from None
    rec = Recommender.from_bundle(cfg.bundle, **opts)
    if rec.index_recall is not None:
        how = "the bundle's prebuilt index" if rec.index_source == "bundle" else "built at start-up"
        print(f"approximate index {rec.index.kind} {rec.index.params()} ({how}): "
              f"recall@{RECALL_K} vs exact = {rec.index_recall:.4f}")
    host, port = sock.getsockname()[:2]
    print(f"serving {cfg.bundle} on http://{host}:{port} (docs: /docs, schema: /openapi.json)", flush=True)
    run_server(create_app(rec, max_body_bytes=cfg.max_body_bytes, batching=cfg.batching), sock=sock,
               access_log=cfg.access_log)
    return 0
