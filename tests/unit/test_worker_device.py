"""The workers' device is decided from the cluster's resources (`ray.cluster_resources()`), never
from the driver's hardware (utils/device.py `worker_device`); pretrain's resource wait."""
from __future__ import annotations

import pytest

from unirec_dist.errors import ConfigError
from unirec_dist.utils.device import worker_device

HEAD_ONLY = {"CPU": 0.0, "memory": 8e9}                  # a CPU-only head, no worker node yet
CPU_CLUSTER = {"CPU": 64.0, "memory": 2e11}
GPU_CLUSTER = {"CPU": 96.0, "GPU": 8.0, "memory": 5e11}  # 2 nodes x 4 GPUs


@pytest.fixture(autouse=True)
def driver_without_cuda(monkeypatch):
    """The driver runs on a CPU-only head: its own CUDA check says no, and must not matter."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("requested, workers, cluster, can_grow, want", [
    ("auto", 8, GPU_CLUSTER, True, "cuda"),     # auto on a cluster with GPUs means GPUs
    ("auto", 2, CPU_CLUSTER, True, "cpu"),
    ("auto", 2, HEAD_ONLY, True, "cpu"),
    ("cuda", 8, GPU_CLUSTER, True, "cuda"),     # a CPU-only driver does not refuse cuda
    ("cuda", 8, HEAD_ONLY, True, "cuda"),       # the GPUs may still come (autoscaler): wait, not refuse
    ("cpu", 8, GPU_CLUSTER, True, "cpu"),
    ("auto", 16, GPU_CLUSTER, True, "cuda"),    # a growing cluster: wait for more GPUs
    ("auto", 2, {"CPU": 16.0, "GPU": 2.0}, False, "cuda"),
])
def test_worker_device_from_cluster_resources(requested, workers, cluster, can_grow, want):
    device, note = worker_device(requested, workers, cluster, can_grow)
    assert device == want and note is None


def test_fewer_gpus_than_workers_on_this_machine_runs_on_cpu_and_says_so():
    """`make demo` (2 workers, embedded cluster) on a 1-GPU machine: CPU workers, not a refusal."""
    device, note = worker_device("auto", 2, {"CPU": 16.0, "GPU": 1.0}, can_grow=False)
    assert device == "cpu"
    assert note == ("2 workers but this machine has 1 GPU(s): the workers run on CPU "
                    "(for GPUs: distributed.workers 1 or fewer, or distributed.device=cuda)")


def test_unknown_device_is_a_config_error():
    with pytest.raises(ConfigError, match="distributed.device must be one of auto, cpu, cuda; got 'tpu'"):
        worker_device("tpu", 1, CPU_CLUSTER, True)
