"""Feature spec (from a prepared dataset's manifest) -> TorchRec embedding table configs.

Table names are stable across runs and writers, because checkpoints and sharding plans are keyed
by them:

    "t_item"       item id table,  EmbeddingConfig,   feature "item", n_items + 1 rows (0 = pad)
    "t_user"       user id table,  EmbeddingConfig,   feature "user", n_users + 1 rows
    "t_<feature>"  item content,   EmbeddingBagConfig (sum pooling; the model divides by the bag
                   length, see models/embedding.py), feature "<feature>"
                   (categorical: vocab size incl. 0; multi: vocab size; text: hash buckets)

Dense item features (fixed-size float vectors) have no table: the model projects them with a
Linear layer to the embedding dim.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from unirec_dist.errors import ConfigError, DataError

ITEM_TABLE = "t_item"
USER_TABLE = "t_user"
SPARSE_KINDS = ("categorical", "multi", "text")
RESERVED = ("item", "user")


def table_name(feature: str) -> str:
    return f"t_{feature}"


@dataclass
class FeatureInfo:
    """One item/user feature as the dataset manifest describes it."""

    name: str
    table: str                  # "items" | "users"
    kind: str                   # categorical | multi | text | dense
    cardinality: int = 0        # rows incl. padding (sparse kinds)
    dim: int = 0                # dense only
    max_len: int = 0            # multi/text: values kept per item


@dataclass
class FeatureSpec:
    """What the embedding layer needs to know about a prepared dataset."""

    n_items: int                # item vocab size INCLUDING the padding row 0
    n_users: int                # user vocab size INCLUDING the padding row 0
    features: list[FeatureInfo] = field(default_factory=list)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], where: str = "dataset manifest") -> "FeatureSpec":
        sizes = manifest.get("vocab_sizes") or {}
        if "item" not in sizes or "user" not in sizes:
            raise DataError(f"{where}: vocab_sizes must have 'item' and 'user' entries")
        feats = []
        for f in manifest.get("features") or []:
            try:
                feats.append(FeatureInfo(
                    name=str(f["name"]), table=str(f.get("table", "items")), kind=str(f["kind"]),
                    cardinality=int(f.get("cardinality") or 0), dim=int(f.get("dim") or 0),
                    max_len=int(f.get("max_len") or 0),
                ))
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{where}: malformed feature entry {f!r}") from None
        return cls(n_items=int(sizes["item"]), n_users=int(sizes["user"]), features=feats)

    def item_features(self, names: list[str]) -> list[FeatureInfo]:
        """The item features selected by `names` ("*" = all item features), in manifest order."""
        avail = [f for f in self.features if f.table == "items"]
        if "*" in names:
            chosen = avail
        else:
            by_name = {f.name: f for f in avail}
            for n in names:
                if n not in by_name:
                    valid = ", ".join(sorted(by_name)) or "(none)"
                    raise ConfigError(
                        f"model.embedding.item_features: {n!r} is not an item feature of the dataset; available: {valid}"
                    )
            chosen = [f for f in avail if f.name in names]
        for f in chosen:
            if f.name in RESERVED:
                raise DataError(f"feature name {f.name!r} is reserved for the id tables")
            if f.kind in SPARSE_KINDS and f.cardinality < 1:
                raise DataError(f"feature {f.name!r}: cardinality must be >= 1, got {f.cardinality}")
            if f.kind == "dense" and f.dim < 1:
                raise DataError(f"feature {f.name!r}: dense dim must be >= 1, got {f.dim}")
        return chosen


def table_dim(dim: int) -> int:
    """Stored width of every table of a model with embedding dim `dim`: `dim` rounded up to a
    multiple of 4.

    FBGEMM's fused kernel, which runs every sharded table (embeddings/sharding.py), asserts
    `embedding_dim % 4 == 0`; the published ML-1M recipes use dim 50. The model reads only the
    first `dim` columns (models/embedding.py), so the extra columns get no gradient and keep
    their init. Every path (train, pretrain, finetune, export) builds the same widths, so
    checkpoints keep one layout."""
    return -(-dim // 4) * 4


def _bound(dim: int, init_std: float | None) -> float:
    # uniform(-b, b) has std b / sqrt(3); min/max (not init_fn) is what sharded kernels honour too
    return init_std * 3 ** 0.5 if init_std is not None else 1.0 / dim ** 0.5


def id_table_configs(spec: FeatureSpec, dim: int, user: bool, init_std: float | None = None):
    """EmbeddingConfigs for the item (and optionally user) id tables.

    init_std: std of the uniform init (None: TorchRec's 1/sqrt(dim) bound). With L2-normalised
    vectors the effective step size is lr / |w|, so a small init (0.02, as generative-recommenders
    uses) learns item directions several times faster than TorchRec's default."""
    from torchrec.modules.embedding_configs import EmbeddingConfig

    bound = _bound(dim, init_std)
    item = EmbeddingConfig(num_embeddings=spec.n_items, embedding_dim=table_dim(dim), name=ITEM_TABLE,
                           feature_names=["item"], weight_init_min=-bound, weight_init_max=bound)
    out = {"item": item}
    if user:
        out["user"] = EmbeddingConfig(num_embeddings=spec.n_users, embedding_dim=table_dim(dim), name=USER_TABLE,
                                      feature_names=["user"], weight_init_min=-bound, weight_init_max=bound)
    return out


def content_table_configs(features: list[FeatureInfo], dim: int, init_std: float | None = None):
    """EmbeddingBagConfigs for the sparse item features: SUM pooling, and the model divides each
    bag by its length (a mean). TorchRec's own MEAN is wrong under some plans: an EBC that mixes
    row-wise MEAN tables with table-/column-wise ones divides the latter twice (torchrec 1.8:
    the row-wise mean callback divides every MEAN feature's output, and the other shardings'
    kernels already divided), so the pooled vector depended on the sharding plan."""
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

    bound = _bound(dim, init_std)
    return [
        EmbeddingBagConfig(num_embeddings=f.cardinality, embedding_dim=table_dim(dim), name=table_name(f.name),
                           feature_names=[f.name], pooling=PoolingType.SUM,
                           weight_init_min=-bound, weight_init_max=bound)
        for f in features if f.kind in SPARSE_KINDS
    ]
