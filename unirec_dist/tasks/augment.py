"""Sequence augmentation on jagged (values, lengths), vectorized: crop, mask, reorder.

values (T,) int64 items of B rows concatenated, lengths (B,) -> new (values, lengths).
Masked items become the padding id 0 (the item table's row 0 acts as the mask token).
"""
from __future__ import annotations

import torch


def _rows(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row index (T,), position within row (T,)) for jagged rows of `lengths`."""
    T = int(lengths.sum())
    row = torch.repeat_interleave(torch.arange(lengths.shape[0], device=lengths.device), lengths, output_size=T)
    pos = torch.arange(T, device=lengths.device) - (torch.cumsum(lengths, 0) - lengths)[row]
    return row, pos


def crop(values: torch.Tensor, lengths: torch.Tensor, p: float, ratio: float,
         g: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability p per row, keep a random contiguous span of max(2, ratio * n) items."""
    B = lengths.shape[0]
    apply = torch.rand(B, generator=g, device=lengths.device) < p
    keep_n = torch.where(apply, torch.clamp((lengths.float() * ratio).floor().long(), min=2), lengths)
    keep_n = torch.minimum(keep_n, lengths)
    start = (torch.rand(B, generator=g, device=lengths.device) * (lengths - keep_n + 1).float()).floor().long()
    row, pos = _rows(lengths)
    keep = (pos >= start[row]) & (pos < (start + keep_n)[row])
    return values[keep], keep_n


def mask(values: torch.Tensor, lengths: torch.Tensor, p: float,
         g: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each item by 0 with probability p."""
    m = torch.rand(values.shape[0], generator=g, device=values.device) < p
    return values.masked_fill(m, 0), lengths


def reorder(values: torch.Tensor, lengths: torch.Tensor, p: float, ratio: float,
            g: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability p per row, shuffle a random span of max(2, ratio * n) items."""
    B = lengths.shape[0]
    apply = torch.rand(B, generator=g, device=lengths.device) < p
    span = torch.minimum(torch.clamp((lengths.float() * ratio).floor().long(), min=2), lengths)
    start = (torch.rand(B, generator=g, device=lengths.device) * (lengths - span + 1).float()).floor().long()
    row, pos = _rows(lengths)
    inside = apply[row] & (pos >= start[row]) & (pos < (start + span)[row])
    # inside the span the key is start + U(0, span): a random order that stays inside the span
    key = torch.where(inside, start[row].float() + torch.rand(values.shape[0], generator=g, device=values.device)
                      * span[row].float(), pos.float())
    order = torch.argsort(row.double() * (2.0 ** 32) + key.double())
    return values[order], lengths


def augment(values: torch.Tensor, lengths: torch.Tensor, cfg, g: torch.Generator | None = None):
    """Apply the configured augmentations (AugmentSection) in order crop, reorder, mask."""
    if cfg.crop > 0:
        values, lengths = crop(values, lengths, cfg.crop, cfg.crop_ratio, g)
    if cfg.reorder > 0:
        values, lengths = reorder(values, lengths, cfg.reorder, cfg.reorder_ratio, g)
    if cfg.mask > 0:
        values, lengths = mask(values, lengths, cfg.mask, g)
    return values, lengths
