"""Device and backend choice, in one place: CUDA + NCCL when there is a GPU, else CPU + gloo."""
from __future__ import annotations

import os
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


def worker_device(requested: str, workers: int, cluster: dict[str, float], can_grow: bool) -> tuple[str, str | None]:
    """The device type of a job's Ray Train workers, from the cluster's resources
    (`ray.cluster_resources()`), never from the driver's own hardware: the driver of a submitted
    job runs on the head, which has no GPU in the shipped cluster definitions.

    cpu / cuda: as asked (cuda waits for GPUs like any other resource). auto: cuda when the
    cluster has GPUs; on a cluster that cannot grow (the embedded local one) with fewer GPUs than
    `workers`, the workers run on CPU instead of being refused. Returns (device type, a note
    saying why when auto did not pick the GPUs it saw, else None).
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"distributed.device must be one of auto, cpu, cuda; got {requested!r}")
    if requested != "auto":
        return requested, None
    gpus = int(cluster.get("GPU", 0))
    if gpus == 0:
        return "cpu", None
    if gpus < workers and not can_grow:
        return "cpu", (f"{workers} workers but this machine has {gpus} GPU(s): the workers run on CPU "
                       f"(for GPUs: distributed.workers {gpus} or fewer, or distributed.device=cuda)")
    return "cuda", None


def dist_backend(device_type: str) -> str:
    """The process-group backend for workers on `device_type` ("cuda" or "cpu")."""
    return "nccl" if device_type == "cuda" else "gloo"


_MALLOC_TUNED = False


def tune_malloc() -> bool:
    """Let glibc reuse freed tensor blocks instead of mapping fresh pages for every batch.

    By default glibc serves each allocation above its mmap threshold (128 KiB at start, raised
    dynamically) with a new mmap and unmaps it when freed, and trims the heap top beyond 128 KiB,
    so each batch's activations are page-faulted in anew. Fixing the mmap threshold at 32 MiB
    (glibc's own upper bound for the dynamic one) and the trim threshold at 1 GiB keeps those
    blocks in the heap for reuse, which is what tcmalloc/jemalloc (PyTorch's advice for CPU) do,
    without a new dependency; blocks above 32 MiB (the sampled-softmax negatives) stay mmapped,
    which keeps the peak where it was (a 1 GiB mmap threshold fragmented the heap: training peak
    1.60 -> 2.02 GiB). Figures in the commit that set this. Freed memory up to 1 GiB stays with
    the process. Linux/glibc only (a no-op elsewhere); UNIREC_TUNE_MALLOC=0 turns it off.
    Returns whether the thresholds are set."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED or os.environ.get("UNIREC_TUNE_MALLOC", "1") == "0":
        return _MALLOC_TUNED
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3          # <malloc.h>
        _MALLOC_TUNED = bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and \
            bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):                           # not glibc
        _MALLOC_TUNED = False
    return _MALLOC_TUNED


def configure_cpu(threads: int | None = None) -> None:
    """Per-process CPU settings, in one place: the allocator (`tune_malloc`) and torch's intra-op
    threads (None: torch's default). Every entry point that runs a model calls this."""
    tune_malloc()
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))
