"""The universal embedding layer: item vector = id embedding + content embedding.

Tables are TorchRec modules (EmbeddingCollection for ids, EmbeddingBagCollection for content
bags), fed KeyedJaggedTensors, so the distributed strategy can shard them without the model
knowing. Content features of every item live in persistent buffers of fixed shape (known from
the dataset manifest), so a checkpoint is self-contained and an item that never appeared in
training still gets a vector from its features.

Buffers (all shapes from the manifest, filled by `set_item_features(items.parquet)`):
    feat_<name>   (n_items, max_len) int32 for multi/text (0 = none), (n_items, 1) for categorical
    dense_<name>  (n_items, dim) float32 for dense vectors
where n_items counts the padding row 0.

When built on the meta device (for DMP), call `set_item_features` after materialisation, or
load a checkpoint, which restores the buffers.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from unirec_dist.embeddings.features import (
    SPARSE_KINDS,
    FeatureInfo,
    FeatureSpec,
    content_table_configs,
    id_table_configs,
)
from unirec_dist.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)


def _flat_kjt(key: str, ids: torch.Tensor):
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    return KeyedJaggedTensor(keys=[key], values=ids, lengths=torch.ones_like(ids, dtype=torch.int64))


class UniversalEmbedding(nn.Module):
    """Maps item ids (and user ids) to D-dim vectors.

    item_vectors(ids (N,)) -> (N, D);  user_vectors(users (N,)) -> (N, D)
    """

    def __init__(
        self,
        spec: FeatureSpec,
        dim: int,
        item_features: list[FeatureInfo],
        item_id: bool = True,
        user_id: bool = False,
        device: torch.device | None = None,
        init_std: float | None = None,
        table_device: torch.device | None = None,
    ) -> None:
        super().__init__()
        from torchrec import EmbeddingBagCollection, EmbeddingCollection

        # table_device="meta": the TorchRec tables stay unallocated (DMP materialises only each
        # rank's shards) while buffers and dense layers are real
        tdev = table_device if table_device is not None else device

        self.dim = dim
        self.n_items = spec.n_items
        tables = id_table_configs(spec, dim, user_id, init_std)
        self.item_ec = EmbeddingCollection([tables["item"]], device=tdev) if item_id else None
        self.user_ec = EmbeddingCollection([tables["user"]], device=tdev) if user_id else None
        self.sparse = [f for f in item_features if f.kind in SPARSE_KINDS]
        self.dense = [f for f in item_features if f.kind == "dense"]
        if not item_id and not item_features:
            raise DataError("model.embedding.item_id is false but the dataset has no selected item features")
        self.content_ebc = (
            EmbeddingBagCollection(content_table_configs(self.sparse, dim, init_std), device=tdev) if self.sparse else None
        )
        for f in self.sparse:
            width = 1 if f.kind == "categorical" else max(f.max_len, 1)
            self.register_buffer(f"feat_{f.name}", torch.zeros(spec.n_items, width, dtype=torch.int32, device=device))
        self.dense_proj = nn.ModuleDict({f.name: nn.Linear(f.dim, dim, device=device) for f in self.dense})
        for f in self.dense:
            self.register_buffer(f"dense_{f.name}", torch.zeros(spec.n_items, f.dim, device=device))

    @property
    def has_content(self) -> bool:
        return bool(self.sparse or self.dense)

    # -- data -------------------------------------------------------------------------------
    @torch.no_grad()
    def set_item_features(self, items: "pa.Table") -> None:
        """Fill the content buffers from an items.parquet table (item: 1..n_items + feature columns)."""
        import pyarrow.compute as pc

        if not self.has_content:
            return
        item = items["item"].to_numpy().astype(np.int64)
        if len(item) and (item.min() < 1 or item.max() >= self.n_items):
            raise DataError(f"items.parquet: item indices must be in 1..{self.n_items - 1}")
        for f in self.sparse:
            if f.name not in items.column_names:
                raise DataError(f"items.parquet: missing feature column {f.name!r}")
            buf = getattr(self, f"feat_{f.name}")
            col = items[f.name].combine_chunks()
            out = np.zeros((self.n_items, buf.shape[1]), dtype=np.int32)
            if f.kind == "categorical":
                out[item, 0] = col.fill_null(0).to_numpy(zero_copy_only=False)
            else:
                lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
                values = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int64)
                rows: np.ndarray = np.repeat(item, lengths)
                cols = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
                keep = cols < out.shape[1]
                out[rows[keep], cols[keep]] = values[keep]
            if out.max(initial=0) >= f.cardinality or out.min(initial=0) < 0:
                raise DataError(f"items.parquet: feature {f.name!r} has values outside 0..{f.cardinality - 1}")
            buf.copy_(torch.from_numpy(out))
        for f in self.dense:
            if f.name not in items.column_names:
                raise DataError(f"items.parquet: missing feature column {f.name!r}")
            buf = getattr(self, f"dense_{f.name}")
            col = items[f.name].combine_chunks()
            vals = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32)
            if vals.size != len(item) * f.dim:
                raise DataError(f"items.parquet: dense feature {f.name!r} must have {f.dim} values per item")
            out = np.zeros((self.n_items, f.dim), dtype=np.float32)
            out[item] = vals.reshape(len(item), f.dim)
            buf.copy_(torch.from_numpy(out))

    # -- lookups ----------------------------------------------------------------------------
    def _content(self, ids: torch.Tensor) -> torch.Tensor:
        """(N,) -> (N, D) sum of mean-pooled sparse bags and projected dense vectors."""
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        out = None
        if self.sparse:
            values: list[torch.Tensor] = []
            lengths: list[torch.Tensor] = []
            for f in self.sparse:
                rows = getattr(self, f"feat_{f.name}")[ids].long()      # (N, W)
                present = rows > 0
                values.append(rows[present])                             # row-major keeps rows grouped
                lengths.append(present.sum(1))
            kjt = KeyedJaggedTensor(keys=[f.name for f in self.sparse], values=torch.cat(values),
                                    lengths=torch.cat(lengths))
            assert self.content_ebc is not None   # built whenever there are sparse features
            # the tables sum-pool (embeddings/features.py says why); the mean is taken here, the
            # same under every sharding plan. A sharded EBC orders its output keys by sharding
            # type, so each feature is read by name. T = table_dim(D) >= D: padding columns dropped.
            pooled = self.content_ebc(kjt).to_dict()                    # name -> (N, T)
            sums = torch.stack([pooled[f.name][:, :self.dim] for f in self.sparse], 1)   # (N, F, D)
            counts = torch.stack(lengths, 1).clamp(min=1).to(sums.dtype)                 # (N, F)
            out = (sums / counts.unsqueeze(-1)).sum(1)
        for f in self.dense:
            d = self.dense_proj[f.name](getattr(self, f"dense_{f.name}")[ids])
            out = d if out is None else out + d
        return out

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (N,) int64 -> (N, D). Padding id 0 maps to whatever row 0 holds; callers mask it."""
        ids = ids.reshape(-1)
        if self.item_ec is None:
            return self._content(ids)
        return self.item_vectors_from(ids, self.item_ec(_flat_kjt("item", ids))["item"].values())

    def item_vectors_from(self, ids: torch.Tensor, id_rows: torch.Tensor) -> torch.Tensor:
        """ids (N,) and their rows (N, T >= D) of the item id table, looked up by the caller (the
        train pipeline's forward, models/seqrec.py) -> (N, D), what item_vectors(ids) gives."""
        out = id_rows[:, :self.dim]
        return out + self._content(ids) if self.has_content else out

    def all_item_vectors(self) -> torch.Tensor:
        """(n_items, D) vectors of every item, row 0 = padding."""
        return self.item_vectors(torch.arange(self.n_items, device=self.device))

    @property
    def device(self) -> torch.device:
        """Where lookups run: the buffers' device, else the parameters'."""
        dev = next(self.buffers(), None)
        return dev.device if dev is not None else next(self.parameters()).device

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """users (N,) -> (N, D)."""
        if self.user_ec is None:
            raise RuntimeError("this model has no user table (model.embedding.user_id is false)")
        return self.user_ec(_flat_kjt("user", users.reshape(-1)))["user"].values()[:, :self.dim]
