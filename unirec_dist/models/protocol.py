"""What evaluation, top-N lists, export and serving need from a trained model.

Scores are dot products: score(query, item) = query_embeddings(batch) @ item_embeddings().T.
Row 0 of the item matrix is the padding index and is never recommended (top-K masks it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from unirec_dist.data.batch import SeqBatch


@runtime_checkable
class Retriever(Protocol):
    #: longest history the query encoder reads (older items are dropped by the batch builder)
    max_len: int

    def item_embeddings(self) -> "torch.Tensor":
        """(n_items + 1, D) item vectors, row 0 = padding. Includes content features, so items
        without training interactions still get a vector."""
        ...

    def query_embeddings(self, batch: "SeqBatch") -> "torch.Tensor":
        """(B, D) query vectors for the users/histories in `batch` (eval mode, no grad needed)."""
        ...
