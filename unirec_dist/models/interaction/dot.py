"""Dot-product interaction: the retrieval score of (query, item)."""
from __future__ import annotations

import torch


def dot_scores(queries: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """queries (B, D), items (N, D) -> (B, N) scores."""
    return queries @ items.T
