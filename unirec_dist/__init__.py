"""unirec_dist: unified, distributed pretraining for recommendation.

Nothing heavy is imported here: `import unirec_dist` must stay cheap (no torch, no ray).
The Python API (what each `unirec` subcommand calls) is re-exported by `unirec_dist.api`.
"""
from __future__ import annotations

__version__ = "0.1.0"
