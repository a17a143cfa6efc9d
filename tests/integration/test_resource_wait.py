"""pretrain on a Ray cluster it joins (here a fixed-size local one, 1 CPU, no GPU): the workers'
device comes from the cluster, not the driver; missing resources are requested and waited for
(`distributed.resource_wait_s`), then refused in one line because this cluster cannot grow. A
cluster that grows while the job waits: tests/integration/test_submit.py."""
from __future__ import annotations

import pytest

from unirec_dist.config.distributed import load_pretrain_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def joined_cluster(tmp_path_factory):
    """A Ray cluster pretrain joins instead of starting its own (address="local": never one
    found running on this machine)."""
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tests.synthetic import prepared_dataset

    return prepared_dataset(tmp_path_factory.mktemp("ds"), n_users=20)


def _cfg(dataset, out, *overrides):
    return load_pretrain_config("configs/pretrain/debug.yaml", [f"data.path={dataset}", f"trainer.out_dir={out}",
                                                                 *overrides])


def test_cuda_on_a_driver_without_cuda_is_decided_by_the_cluster(joined_cluster, dataset, tmp_path, monkeypatch):
    """distributed.device=cuda from a CPU-only driver: not "CUDA is not available" on the driver,
    but the cluster's own GPU count (0 here), checked where the workers would run."""
    import torch

    from unirec_dist.training.pretrain import ClusterError, pretrain

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = _cfg(dataset, tmp_path / "run", "distributed.device=cuda", "distributed.resource_wait_s=0")
    with pytest.raises(ClusterError, match=r"^distributed\.workers 1 needs 1 GPUs but the Ray cluster has 0$"):
        pretrain(cfg, workers=1, progress=False)


def test_a_cluster_that_does_not_grow_is_refused_after_the_wait(joined_cluster, dataset, tmp_path):
    from unirec_dist.training.pretrain import ClusterError, pretrain

    cfg = _cfg(dataset, tmp_path / "run", "distributed.device=cpu", "distributed.resource_wait_s=3")
    with pytest.raises(ClusterError, match=r"^distributed\.workers 4 needs 4 CPUs \(1 per worker\) but the Ray cluster has 1 "
                                           r"\(after waiting 3 s, distributed.resource_wait_s\)$"):
        pretrain(cfg, workers=4, progress=False)
    assert not (tmp_path / "run" / "ray").exists()
