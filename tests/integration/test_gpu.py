"""The GPU-only code paths (`@pytest.mark.gpu`: skipped with the reason where CUDA is absent, by
tests/conftest.py; bench/gpu_check.sh runs them on a GPU machine): device and backend choice,
the planner's topology from the GPU's own memory, and `unirec pretrain` on 1 GPU worker with
NCCL, the stock row-wise sharder and the FBGEMM fused Adam on the tables (CPU has neither), and
with TorchRec's train pipeline on CUDA streams."""
from __future__ import annotations

import json

import pytest

from unirec_dist.cli import main

pytestmark = pytest.mark.gpu


def test_device_choice_picks_cuda_and_nccl():
    import torch

    from unirec_dist.utils.device import dist_backend, resolve_device, worker_device

    assert resolve_device("auto").type == "cuda"
    assert dist_backend("cuda") == "nccl"
    assert worker_device("auto", 1, {"GPU": float(torch.cuda.device_count())}, can_grow=False) == ("cuda", None)


def test_planner_topology_uses_the_gpu_memory():
    import torch

    from unirec_dist.embeddings.sharding import make_topology

    topo = make_topology(1, "cuda")
    assert topo.devices[0].storage.hbm == torch.cuda.get_device_properties(0).total_memory


def pretrain_on_one_gpu(tmp_path, *extra: str) -> dict:
    """`unirec pretrain` on 1 GPU worker (NCCL, fused Adam on the tables) of a small synthetic
    dataset -> the final checkpoint's manifest."""
    from tests.synthetic import prepared_dataset

    ds = prepared_dataset(tmp_path / "ds", n_users=60)
    out = tmp_path / "run"
    rc = main(["pretrain", "--config", "configs/pretrain/debug.yaml", "--no-progress", "--workers", "1",
               f"data.path={ds}", f"trainer.out_dir={out}", "distributed.device=cuda", "optim.tables=adam", *extra])
    assert rc == 0
    return json.loads((out / "checkpoints" / "final" / "manifest.json").read_text())


def test_pretrain_on_one_gpu_with_nccl_and_fused_adam(tmp_path):
    m = pretrain_on_one_gpu(tmp_path, "distributed.sharding.t_item=row_wise", "trainer.max_epochs=1")
    assert m["plan"]["device_type"] == "cuda" and m["table_optimizer"]["kind"] == "adam"
    assert m["plan"]["tables"]["t_item"]["sharding_type"] == "row_wise"
    (w,) = json.loads((tmp_path / "run" / "pretrain.json").read_text())["worker_stats"]
    assert w["gpu_peak_mib"] > 0


def test_train_pipeline_on_one_gpu_overlaps_on_cuda_streams(tmp_path):
    """`distributed.train_pipeline=sparse_dist` on CUDA: batches are copied on the pipeline's own
    stream (SeqBatch.to(non_blocking) and record_stream) and the item table is pipelined."""
    m = pretrain_on_one_gpu(tmp_path, "distributed.train_pipeline=sparse_dist", "trainer.max_epochs=2")
    assert m["plan"]["device_type"] == "cuda"
    assert m["train_pipeline"] == {"kind": "sparse_dist", "pipelined": ["embedding.item_ec"]}
