"""Encoder name -> (config dataclass, module): the one place an encoder is registered.

`model.encoder.kind` in a training YAML picks the entry; the rest of `model.encoder` is that
config dataclass's fields. Adding an encoder = one file in this package (an `EncoderConfig`
dataclass and a `SequenceEncoder`, see base.py) + one line here + a YAML in configs/pretrain/.
"""
from __future__ import annotations

from unirec_dist.models.encoders.base import EncoderEntry
from unirec_dist.models.encoders.gru4rec import GRU4RecConfig, GRU4RecEncoder
from unirec_dist.models.encoders.hstu import HSTUConfig, HSTUEncoder
from unirec_dist.models.encoders.pooling import MeanPoolConfig, MeanPoolEncoder, MFConfig, MFEncoder
from unirec_dist.models.encoders.sasrec import SASRecConfig, SASRecEncoder
from unirec_dist.utils.registry import Registry

ENCODERS: Registry[EncoderEntry] = Registry("encoder", {
    "sasrec": EncoderEntry(SASRecConfig, SASRecEncoder),
    "hstu": EncoderEntry(HSTUConfig, HSTUEncoder),
    "mean_pool": EncoderEntry(MeanPoolConfig, MeanPoolEncoder),
    "mf": EncoderEntry(MFConfig, MFEncoder),
    "gru4rec": EncoderEntry(GRU4RecConfig, GRU4RecEncoder),
})

DEFAULT_ENCODER = "sasrec"      # model.encoder without a kind

# Keys of the single flat encoder section that resolved configs carried before each encoder had
# its own dataclass (checkpoint manifests written then list all of them; see EncoderConfig).
LEGACY_FLAT_KEYS = frozenset({"kind", "num_blocks", "num_heads", "ffn_dim", "dqk", "dv", "dropout",
                              "attn_dropout", "hidden"})


def build_encoder(cfg, dim: int, max_len: int):
    """The module for config `cfg` (an EncoderConfig), embedding dim `dim`, histories <= max_len."""
    return ENCODERS[cfg.kind].encoder.from_config(cfg, dim, max_len)
