"""Sharded evaluation over 2 gloo processes equals single-process evaluation exactly: each rank
scores only its own block of item rows, the per-rank top-K are merged, and rank 0 alone counts the
merged lists (so the all-reduced sums are the single process's, bit for bit)."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pyarrow as pa
import pytest
import torch
import torch.multiprocessing as mp

N_USERS, N_ITEMS, DIM = 37, 60, 4  # an odd number of queries: the shards differ in size
KS = (1, 5, 20, 100)  # 100 > N_ITEMS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_case():
    g = torch.Generator().manual_seed(3)
    # integer-valued vectors produce many exact ties, the hard case for sharding
    users = torch.randint(-2, 3, (N_USERS + 1, DIM), generator=g).float()
    items = torch.randint(-2, 3, (N_ITEMS + 1, DIM), generator=g).float()
    lengths = torch.randint(0, 6, (N_USERS,), generator=g).tolist()
    hist = [torch.randint(1, N_ITEMS + 1, (n,), generator=g).tolist() for n in lengths]
    targets = [torch.randint(1, N_ITEMS + 1, (1 + u % 2,), generator=g).tolist() for u in range(N_USERS)]
    table = pa.table(
        {
            "user": pa.array(range(1, N_USERS + 1), pa.int32()),
            "history": pa.array(hist, pa.list_(pa.int32())),
            "targets": pa.array(targets, pa.list_(pa.int32())),
        }
    )
    return users, items, table


class Lookup:
    max_len = 10

    def __init__(self, users, items):
        self.users, self.items = users, items
        self.calls = 0

    def item_embeddings(self):
        return self.items

    def query_embeddings(self, batch):
        self.calls += 1
        return self.users[batch.users]


def run(mask_seen: bool) -> dict:
    from unirec_dist.metrics.evaluate import evaluate_table

    users, items, table = make_case()
    model = Lookup(users, items)
    # 37 queries in batches of 3 = 13 batches; on 2 ranks each encodes 7 (rank 1: 6 and a dummy)
    out = evaluate_table(model, table, N_ITEMS, ks=KS, mask_seen=mask_seen, batch_size=3)
    out["batches"] = model.calls
    # the merged lists themselves (K beyond the catalogue, masking, integer ties)
    from unirec_dist.data.batch import make_seq_batch
    from unirec_dist.metrics.sharded import ranked_lists

    batch = make_seq_batch(table["user"], table["history"], None)
    [(scores, ids)] = ranked_lists(model, [batch], [batch.seq] if mask_seen else None, N_ITEMS, 100)
    out["lists"] = ids.tolist()
    out["scores"] = scores.tolist()
    return out


def worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = {"plain": run(False), "masked": run(True)}
        # the accumulator alone: each rank feeds a different, uneven slice of the same batch
        from unirec_dist.metrics.ranking import RankingAccumulator

        ids, targets = accumulator_case()
        acc = RankingAccumulator((1, 3), n_items=6)
        part = slice(0, 1) if rank == 0 else slice(1, None)
        acc.update(ids[part], targets[part])
        result["acc"] = acc.compute()
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
        # leave together: a rank exiting while the other is still inside a gloo collective can
        # abort (SIGABRT), as seen once in CI
        dist.barrier()
    finally:
        dist.destroy_process_group()


def accumulator_case():
    ids = torch.tensor([[6, 1, 2, 3, 4, 5], [2, 3, 4, 5, 6, 1], [5, 4, 3, 2, 1, 6]])
    targets = torch.tensor([[1], [4], [5]])
    return ids, targets


@pytest.mark.parametrize("world", [2])
def test_sharded_equals_single_process(tmp_path, world):
    single = {"plain": run(False), "masked": run(True)}
    ids, targets = accumulator_case()
    from unirec_dist.metrics.ranking import RankingAccumulator

    acc = RankingAccumulator((1, 3), n_items=6)
    acc.update(ids, targets)
    single["acc"] = acc.compute()
    # by hand: ranks of the targets are 2, 3, 1 -> HR@1 1/3, HR@3 1, coverage@1 {6, 2, 5} = 1/2
    assert single["acc"]["HR@1"] == pytest.approx(1 / 3)
    assert single["acc"]["HR@3"] == pytest.approx(1.0)
    assert single["acc"]["Coverage@1"] == pytest.approx(3 / 6)
    assert single["plain"]["queries"] == N_USERS

    mp.start_processes(worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True, start_method="spawn")
    batches = set()
    for rank in range(world):
        got = json.loads(Path(tmp_path, f"rank{rank}.json").read_text())
        for case in ("plain", "masked"):
            batches.add(got[case].pop("batches"))
            single[case].pop("batches", None)
        for case in ("plain", "masked", "acc"):
            assert got[case] == single[case], (rank, case)       # exactly
    # every rank encoded every other batch of the 13 (rank 1 six and a dummy): the same number of
    # forward calls (a collective model forward cannot hang)
    assert batches == {7}
