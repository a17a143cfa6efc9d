"""The encoder interface: what every sequence encoder takes, returns and declares.

An encoder is two classes in one file of this package, registered by name in registry.py:

* a config dataclass (subclass of `EncoderConfig`): the keys of `model.encoder` in a training
  YAML for this encoder, `kind` first, with a `validate()` that names the dotted key it refuses;
* an `nn.Module` (subclass of `SequenceEncoder`) built by `from_config(cfg, dim, max_len)`.

Shapes: B rows, L positions (right-padded: row b holds `lengths[b]` items, then padding), D the
embedding dim. Encoders are causal (the state at position t depends on items 0..t only), so one
pass over a sequence of n items trains n next-item targets, and the state at lengths[b] - 1 is
the query for whatever follows the history.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from unirec_dist.errors import check


def check_dropout(cfg: Any, *names: str) -> None:
    for k in names:
        v = getattr(cfg, k)
        check(0.0 <= v < 1.0, f"model.encoder.{k}", f"must be in [0, 1), got {v}")


class EncoderConfig:
    """Base of the encoders' config dataclasses (each declares `kind: Literal[name] = name` first).

    The strict loader (config/loader.py) builds `model.encoder` through `resolve_variant`: the
    mapping's `kind` picks the registered dataclass, whose own fields are then checked strictly
    (a key of another encoder is an unknown key, with the nearest valid one suggested).
    """

    kind: str

    def validate(self) -> None:
        """Checks of this section alone (dropout in range, sizes >= 1)."""

    def validate_for_model(self, dim: int) -> None:
        """Checks against the rest of the model section (e.g. heads must divide `dim`)."""

    @property
    def uses_times(self) -> bool:
        """Whether the encoder reads event timestamps (the dataset must have real ones)."""
        return False

    @property
    def encoder_class(self) -> type[SequenceEncoder]:
        return registered(self.kind).encoder

    @classmethod
    def resolve_variant(cls, data: dict[str, Any]) -> tuple[type, dict[str, Any]]:
        """The loader's hook: (config dataclass for data["kind"], the keys to build it from).
        Raises ConfigError("kind: ...") for an unregistered name."""
        # imported here: registry.py imports every encoder module, and they import this one
        from unirec_dist.models.encoders.registry import DEFAULT_ENCODER, ENCODERS, LEGACY_FLAT_KEYS

        config = ENCODERS.lookup(data.get("kind", DEFAULT_ENCODER), "kind").config
        if set(data) == LEGACY_FLAT_KEYS:
            # a resolved config saved by a checkpoint before each encoder had its own section:
            # it lists every encoder's fields; keep this encoder's
            own = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]  # each config is a dataclass
            data = {k: v for k, v in data.items() if k in own}
        return config, data


def registered(kind: str) -> EncoderEntry:
    """The registry entry (config, encoder) for `kind` (ConfigError when there is none)."""
    from unirec_dist.models.encoders.registry import ENCODERS

    return ENCODERS.lookup(kind, "model.encoder.kind")


class SequenceEncoder(nn.Module, abc.ABC):
    """Item-embedding sequences -> per-position states, causally.

    Capabilities (class attributes; the model, config checks and fine-tuning read them instead
    of the encoder's name):
      needs_user_vectors: forward gets the users' id vectors (B, D) (MF); otherwise None and
        the model builds no user table for it.
      reads_history: the states depend on the items (False for MF): tasks that contrast or
        score histories (ctr, the contrastive term) need it.
      fixed_max_len: parameters are sized by max_len (learned positions), so a trained encoder
        cannot read longer histories.
      uses_times (per instance, from its config): forward and last_states take `times`
        (B, L + 1) int64 seconds: position t's event time, and at index lengths[b] the time of
        what follows the history (the next item's in training, the request's when serving).
    `last_states` is the query path. The default runs `forward` over every position and keeps
    the last one; an encoder that can compute that one state more cheaply overrides it (SASRec
    and HSTU run their last block for the last position only).
    """

    needs_user_vectors: ClassVar[bool] = False
    reads_history: ClassVar[bool] = True
    fixed_max_len: ClassVar[bool] = False
    uses_times: bool = False

    @classmethod
    @abc.abstractmethod
    def from_config(cls, cfg: Any, dim: int, max_len: int) -> SequenceEncoder:
        """Build from this encoder's config dataclass, embedding dim D and the longest history."""

    @abc.abstractmethod
    def forward(self, items: torch.Tensor, lengths: torch.Tensor,
                users: torch.Tensor | None = None) -> torch.Tensor:
        """items (B, L, D) item vectors (padding rows zero), lengths (B,) >= 1, users (B, D) or
        None -> (B, L, D) un-normalised states; state t depends on items 0..t; rows t >= lengths
        are zero."""

    def last_states(self, items: torch.Tensor, lengths: torch.Tensor,
                    users: torch.Tensor | None = None) -> torch.Tensor:
        """items (B, L, D), lengths (B,) >= 0 -> (B, D): the state at position lengths - 1, equal
        to forward(...)[b, lengths[b] - 1]. A row with no history has no state: zeros."""
        states = self(items, lengths.clamp(min=1), users)
        last = (lengths - 1).clamp(min=0)
        q = states[torch.arange(states.shape[0], device=states.device), last]
        return q * (lengths > 0).unsqueeze(-1).to(q.dtype)


class EncoderEntry(NamedTuple):
    """One registered encoder: its config dataclass and its module (built by from_config)."""
    config: type[EncoderConfig]
    encoder: type[SequenceEncoder]
