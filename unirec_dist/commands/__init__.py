"""CLI subcommands: one module each, `register(subparsers)`; heavy imports inside `func` only."""
