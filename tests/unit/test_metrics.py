"""Ranking metrics against values computed by hand, and evaluation end to end on tiny tables."""
from __future__ import annotations

import math

import pyarrow as pa
import pytest
import torch

from unirec_dist.metrics.evaluate import PopularityRetriever, evaluate, evaluate_table, format_table
from unirec_dist.metrics.ranking import RankingAccumulator

L3 = 1 / math.log2(3)  # discount at rank 2
L6 = 1 / math.log2(6)  # discount at rank 5

# N = 5 items; K = 10 is larger than the catalogue.
IDS = torch.tensor(
    [
        [3, 1, 2, 4, 5],  # q0: target 1 at rank 2
        [2, 5, 1, 3, 4],  # q1: targets 5 (rank 2) and 4 (rank 5)
        [4, 2, 1, 3, 5],  # q2: target 4 (given twice) at rank 1
        [5, 4, 3, 2, 1],  # q3: no target -> not counted, not in coverage
        [1, 0, 0, 0, 0],  # q4: only item 1 left; target 2 missed; empty slots never hit padding
    ]
)
TARGETS = torch.tensor([[1, 0], [5, 4], [4, 4], [0, 0], [2, 0]])

EXPECTED = {
    "HR@1": 1 / 4,
    "HR@3": 3 / 4,
    "HR@10": 3 / 4,
    "Recall@1": 1 / 4,
    "Recall@3": (1 + 1 / 2 + 1 + 0) / 4,
    "Recall@10": 3 / 4,
    "NDCG@1": 1 / 4,
    "NDCG@3": (L3 + L3 / (1 + L3) + 1) / 4,
    "NDCG@10": (L3 + (L3 + L6) / (1 + L3) + 1) / 4,
    "MRR@1": 1 / 4,
    "MRR@3": (1 / 2 + 1 / 2 + 1) / 4,
    "MRR@10": (1 / 2 + 1 / 2 + 1) / 4,
    "Precision@1": 1 / 4,
    "Precision@3": (1 / 3 + 1 / 3 + 1 / 3) / 4,
    "Precision@10": (1 / 5 + 2 / 5 + 1 / 5) / 4,  # divided by min(K, N) = 5
    "Coverage@1": 4 / 5,  # {3, 2, 4, 1}; q3's item 5 does not count
    "Coverage@3": 5 / 5,
    "Coverage@10": 5 / 5,
    "queries": 4,
}


def test_metrics_by_hand():
    acc = RankingAccumulator((1, 3, 10), n_items=5)
    acc.update(IDS, TARGETS)
    got = acc.compute()
    assert set(got) == set(EXPECTED)
    for name, value in EXPECTED.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name


def test_streaming_equals_one_batch():
    acc = RankingAccumulator((1, 3, 10), n_items=5)
    for rows in ([0, 1], [2], [3, 4]):
        acc.update(IDS[rows], TARGETS[rows])
    got = acc.compute()
    for name, value in EXPECTED.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    acc.reset()
    acc.update(IDS[:1], TARGETS[:1])
    assert acc.compute()["queries"] == 1


def test_recall_divides_by_all_targets():
    # 3 targets, K = 2, 2 hits: Recall = 2/3 (not 2/min(3, 2) = 1); NDCG ideal uses min(|T|, K)
    acc = RankingAccumulator((2,), n_items=6)
    acc.update(torch.tensor([[2, 3, 1, 4, 5, 6]]), torch.tensor([[3, 2, 6]]))
    got = acc.compute()
    assert got["Recall@2"] == pytest.approx(2 / 3)
    assert got["HR@2"] == 1.0
    assert got["NDCG@2"] == pytest.approx(1.0)
    assert got["Precision@2"] == pytest.approx(1.0)


def test_many_targets_per_row():
    # 100 targets (the wide-row code path): items 1..100 are targets, the list is 1, 200, 2, ...
    ids = torch.tensor([[1, 200, 2, 150, 3]])
    targets = torch.arange(1, 101).unsqueeze(0)
    acc = RankingAccumulator((5,), n_items=200)
    acc.update(ids, targets)
    got = acc.compute()
    assert got["Recall@5"] == pytest.approx(3 / 100)
    assert got["Precision@5"] == pytest.approx(3 / 5)
    idcg = sum(1 / math.log2(i + 1) for i in range(1, 6))
    assert got["NDCG@5"] == pytest.approx((1 + 1 / 2 + 1 / math.log2(6)) / idcg)


def test_one_target_recall_equals_hr():
    torch.manual_seed(0)
    ids = torch.stack([torch.randperm(20) + 1 for _ in range(30)])
    targets = torch.randint(1, 21, (30, 1))
    acc = RankingAccumulator((1, 5, 10), n_items=20)
    acc.update(ids, targets)
    got = acc.compute()
    for k in (1, 5, 10):
        assert got[f"Recall@{k}"] == got[f"HR@{k}"]
        # with one target, NDCG = mean 1/log2(rank+1) over hits, MRR = mean 1/rank
        ranks = (ids == targets).float().argmax(1) + 1
        hit = ranks <= k
        assert got[f"MRR@{k}"] == pytest.approx(float((hit / ranks).mean()))
        assert got[f"NDCG@{k}"] == pytest.approx(float((hit / torch.log2(ranks + 1.0)).mean()))


def test_accumulator_rejects_short_lists():
    acc = RankingAccumulator((10,), n_items=50)
    with pytest.raises(ValueError):
        acc.update(torch.ones((2, 5), dtype=torch.long), torch.ones((2, 1), dtype=torch.long))
    with pytest.raises(ValueError):
        RankingAccumulator((0,), n_items=5)


# ---- evaluate() on hand-made prepared tables -------------------------------------------------


class TinyDataset:
    """The two methods evaluate()/popularity() use of a prepared dataset."""

    def __init__(self, tables: dict[str, pa.Table], n_items: int) -> None:
        self.tables, self.n_items = tables, n_items

    def table(self, split: str) -> pa.Table:
        return self.tables[split]


def queries(users, histories, targets) -> pa.Table:
    return pa.table(
        {
            "user": pa.array(users, pa.int32()),
            "history": pa.array(histories, pa.list_(pa.int32())),
            "targets": pa.array(targets, pa.list_(pa.int32())),
        }
    )


# Train counts: item 1 x3, item 2 x2, item 3 x2, item 4 x1, item 5 x0 (never in training)
TRAIN = pa.table(
    {
        "user": pa.array([1, 2, 3], pa.int32()),
        "items": pa.array([[1, 2, 3], [1, 2], [1, 3, 4]], pa.list_(pa.int32())),
    }
)
TEST = queries(
    [1, 2, 3],
    [[1, 2, 3], [1, 2], [1, 3, 4]],
    [[2], [5], [4]],  # user 2's target, item 5, was never seen in training
)


def test_popularity_baseline_by_hand():
    ds = TinyDataset({"train": TRAIN, "test": TEST}, n_items=5)
    pop = PopularityRetriever.from_train(TRAIN, 5)
    assert pop.item_embeddings().squeeze(1).tolist() == [0, 3, 2, 2, 1, 0]
    # ranking for everyone: 1 (3), 2 (2), 3 (2; tie with 2, higher id), 4 (1), 5 (0)
    report = evaluate(pop, ds, split="test", ks=(1, 2, 10))
    m = report["metrics"]
    # user 1: target 2 at rank 2; user 2: target 5 at rank 5; user 3: target 4 at rank 4
    assert m["HR@1"] == 0
    assert m["HR@2"] == pytest.approx(1 / 3)
    assert m["HR@10"] == pytest.approx(1.0)
    assert m["MRR@10"] == pytest.approx((1 / 2 + 1 / 5 + 1 / 4) / 3)
    assert m["NDCG@10"] == pytest.approx((L3 + L6 + 1 / math.log2(5)) / 3)
    assert m["Coverage@1"] == pytest.approx(1 / 5)
    assert m["Coverage@2"] == pytest.approx(2 / 5)
    assert m["Precision@10"] == pytest.approx(1 / 5)
    p = report["protocol"]
    assert p["n_items"] == 5 and p["queries"] == 3 and p["mask_seen"] is False and p["ranking"] == "full"

    # masking the history: user 1 ranks 4, 5 (2, 3 and 1 masked) -> misses target 2 entirely;
    # user 2 ranks 3, 4, 5 -> target 5 at rank 3; user 3 ranks 2, 5 -> target 4 masked
    masked = evaluate(pop, ds, split="test", ks=(1, 2, 10), mask_seen=True)
    mm = masked["metrics"]
    assert masked["protocol"]["mask_seen"] is True
    assert mm["HR@10"] == pytest.approx(1 / 3)
    assert mm["MRR@10"] == pytest.approx((0 + 1 / 3 + 0) / 3)
    assert mm["Coverage@1"] == pytest.approx(3 / 5)  # top-1: 4 (user 1), 3 (user 2), 2 (user 3)
    table = format_table(masked)
    assert "seen items masked" in table and "full ranking over 5 items" in table


class TableRetriever(torch.nn.Module):
    """A Retriever whose query is the user's row of a fixed matrix (checks the wiring)."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, max_len: int = 50) -> None:
        super().__init__()
        self.users, self.items, self.max_len = users, items, max_len

    def item_embeddings(self) -> torch.Tensor:
        return self.items

    def query_embeddings(self, batch) -> torch.Tensor:
        assert not torch.is_grad_enabled()
        return self.users[batch.users]


def test_evaluate_batches_and_model_mode_do_not_change_metrics():
    torch.manual_seed(0)
    n_users, n_items = 40, 30
    model = TableRetriever(torch.randn(n_users + 1, 4), torch.randn(n_items + 1, 4))
    g = torch.Generator().manual_seed(1)
    hist = [torch.randint(1, n_items + 1, (int(n),), generator=g).tolist() for n in torch.randint(1, 8, (n_users,), generator=g)]
    tg = [torch.randint(1, n_items + 1, (1 + u % 3,), generator=g).tolist() for u in range(n_users)]
    table = queries(list(range(1, n_users + 1)), hist, tg)
    model.train()
    a = evaluate_table(model, table, n_items, ks=(5, 10), batch_size=7)
    assert model.training  # restored
    b = evaluate_table(model, table, n_items, ks=(5, 10), batch_size=1000)
    assert a == pytest.approx(b, abs=1e-12)
    # the reference: one full sort per user, computed independently
    s = model.users[1:] @ model.items.T
    s[:, 0] = float("-inf")
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    hits10 = [len(set(order[u, :10].tolist()) & set(tg[u])) / len(set(tg[u])) for u in range(n_users)]
    assert a["Recall@10"] == pytest.approx(sum(hits10) / n_users)


def test_per_user_ndcg_by_hand():
    """evaluate(per_user=True): each query's user, full history length and NDCG@10 (the
    popularity ranking of test_popularity_baseline_by_hand), and the aggregate is unchanged."""
    ds = TinyDataset({"train": TRAIN, "test": TEST}, n_items=5)
    pop = PopularityRetriever.from_train(TRAIN, 5)
    plain = evaluate(pop, ds, split="test", ks=(1, 10))
    report = evaluate(pop, ds, split="test", ks=(1, 10), per_user=True, batch_size=2)
    assert "per_user" not in plain and report["metrics"] == plain["metrics"]
    rows = report["per_user"]
    assert sorted(zip(rows["user"], rows["history_length"])) == [(1, 3), (2, 2), (3, 3)]
    ndcg = dict(zip(rows["user"], rows["NDCG@10"]))
    assert ndcg == pytest.approx({1: L3, 2: L6, 3: 1 / math.log2(5)})
    with pytest.raises(ValueError, match="K=10"):
        evaluate(pop, ds, split="test", ks=(1, 5), per_user=True)
