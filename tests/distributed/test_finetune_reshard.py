"""The fine-tuning loader reads checkpoints of any writer world size (DCP reshards on load):
a checkpoint written by 2 gloo workers with row-sharded embedding tables (DTensor Shard(0))
loads into 1 process with outputs identical to the 1-process checkpoint it came from, and
fine-tuning initialises identically from both; the 1-process checkpoint loads into 2 workers'
row shards with exactly the rows each rank owns."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

from tests.distributed.toy import free_port
from tests.synthetic import prepared_dataset
from unirec_dist.cli import main

REPO = Path(__file__).resolve().parents[2]

# the sharded tables: every id/content table of the model
TABLE_MARK = (".embeddings.", ".embedding_bags.")


def _worker(rank: int, world: int, port: int, src: str, out: str, result: str) -> None:
    warnings.filterwarnings("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as dist
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh

    from unirec_dist.checkpoint.dcp import load_checkpoint, read_manifest, save_checkpoint
    from unirec_dist.models.factory import load_retriever

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        model, manifest = load_retriever(src)        # no process group use: plain module per rank
        sd = model.state_dict()

        def sharded(fill_zero: bool) -> dict:
            st = {}
            for k, v in sd.items():
                t = torch.zeros_like(v) if fill_zero else v
                st[k] = distribute_tensor(t, mesh, [Shard(0)]) if any(m in k for m in TABLE_MARK) else \
                    distribute_tensor(t, mesh, [Replicate()])
            return st

        # 2 workers write a row-sharded checkpoint
        keep = {k: v for k, v in manifest.items() if k not in ("format_version", "created_at", "world_size", "versions")}
        save_checkpoint(out, {"model": sharded(False)}, keep)
        # 1-process checkpoint -> 2 workers: each rank's shard must be its rows of the original
        state = {"model": sharded(True)}
        load_checkpoint(src, state)
        ok = True
        for k, v in state["model"].items():
            local = v.to_local()
            if any(m in k for m in TABLE_MARK):
                n = sd[k].shape[0]
                per = -(-n // world)
                ref = sd[k][rank * per: min((rank + 1) * per, n)]
            else:
                ref = sd[k]
            ok = ok and torch.equal(local, ref)
        if rank == 0:
            torch.save({"one_to_two_equal": ok, "world_size": read_manifest(out)["world_size"]}, result)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reshard")
    a = prepared_dataset(tmp / "a", n_users=50, n_items=40, seed=0)
    b = prepared_dataset(tmp / "b", n_users=60, n_items=50, seed=1)
    assert main(["train", "--config", str(REPO / "configs/pretrain/debug.yaml"), f"data.path={a}",
                 f"trainer.out_dir={tmp / 'pre'}", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                 "model.embedding.user_id=true", "trainer.loggers=[]"]) == 0
    one = tmp / "pre" / "checkpoints" / "last"
    two = tmp / "two_workers"
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, free_port(), str(one), str(two), str(tmp / "r.pt")), nprocs=2, join=True)
    return {"one": one, "two": two, "a": a, "b": b, "res": torch.load(tmp / "r.pt", weights_only=False)}


def test_one_process_checkpoint_into_two_workers(ckpts):
    assert ckpts["res"]["world_size"] == 2
    assert ckpts["res"]["one_to_two_equal"]


def test_two_worker_checkpoint_into_one_process_for_finetuning(ckpts):
    import pyarrow.parquet as pq

    from unirec_dist.config.finetune import load_finetune_config
    from unirec_dist.data.batch import make_seq_batch
    from unirec_dist.models.factory import build_from_config, load_retriever
    from unirec_dist.training.finetune import init_from_pretrained, plan_finetune

    m1, _ = load_retriever(ckpts["one"])
    m2, _ = load_retriever(ckpts["two"])
    q = pq.read_table(ckpts["a"] / "test.parquet").slice(0, 8)
    with torch.no_grad():
        assert torch.equal(m1.item_embeddings(), m2.item_embeddings())
        b = make_seq_batch(q["user"], q["history"], m1.max_len)
        assert torch.equal(m1.query_embeddings(b), m2.query_embeddings(b))
    cfg = load_finetune_config(REPO / "configs/finetune/debug.yaml", [f"data.path={ckpts['b']}"])
    models = []
    for ck in (ckpts["one"], ckpts["two"]):
        plan = plan_finetune(cfg, ck)
        torch.manual_seed(0)
        m = build_from_config(plan.train_cfg, plan.target.manifest)
        m.embedding.set_item_features(pq.read_table(ckpts["b"] / "items.parquet"))
        init_from_pretrained(m, plan)
        models.append(m.state_dict())
    assert models[0].keys() == models[1].keys()
    for k in models[0]:
        assert torch.equal(models[0][k], models[1][k]), k
