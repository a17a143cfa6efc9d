from __future__ import annotations

import os

# Keep tests on the CPU thread budget of the CI machine (2 cores) and quiet.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.gpu` tests run only where CUDA is available; elsewhere they are skipped with
    the reason (run them on a GPU machine with `pytest -m gpu`, as bench/gpu_check.sh does)."""
    import pytest

    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: this machine has no GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
