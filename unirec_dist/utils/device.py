"""Device and backend choice, in one place: CUDA + NCCL when there is a GPU, else CPU + gloo."""
from __future__ import annotations

from typing import TYPE_CHECKING

from unirec_dist.errors import ConfigError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str = "auto", local_rank: int = 0) -> "torch.device":
    """`auto` -> cuda:<local_rank> when CUDA is available, else cpu; `cpu`/`cuda` force it."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but CUDA is not available on this machine")
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"device must be one of auto, cpu, cuda; got {name!r}")


def dist_backend(device: "torch.device") -> str:
    return "nccl" if device.type == "cuda" else "gloo"
