"""Serving: `Recommender` (bundle -> top-K + explanations in raw ids), the HTTP app, Ray Serve.

    from unirec_dist.serving import Recommender
    rec = Recommender.from_bundle("runs/demo/bundle")

Modules: bundle (format, writer, model builders), recommender, index (exact / HNSW), explain,
app (FastAPI), batching (micro-batches for /recommend), display (titles and other display
fields beside ids), server (uvicorn runners), ray_app (Ray Serve), config (serving YAML schema),
synthetic (catalogues for tests and benchmarks), topn (top-N Parquet for known users).
"""
from __future__ import annotations

from typing import Any

__all__ = ["Recommender"]


def __getattr__(name: str) -> Any:
    # lazy: importing the package must not import torch/fastapi
    if name == "Recommender":
        from unirec_dist.serving.recommender import Recommender

        return Recommender
    raise AttributeError(name)
