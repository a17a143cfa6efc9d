"""Tables built on the meta device: DMP allocates only each rank's shards and the strategy fills
them with the deterministic init (a function of seed, table and global row), so 1 worker, 2
row-wise workers, 2 workers under another plan and a plain unsharded process all start from the
same weights and take the same first step."""
from __future__ import annotations

import warnings

import pytest
import torch

from tests.distributed import toy

RW = {"item_t": "row_wise", "user_t": "row_wise"}
OTHER = {"item_t": "column_wise", "user_t": "table_wise"}
META = "meta"


def _table(name="t", rows=50_000, dim=6):
    from unirec_dist.embeddings.sharding import TableInfo

    return TableInfo(name, "seq", rows, dim, "m", (), -0.1, 0.1)


def test_fill_table_init_is_independent_of_the_split():
    from unirec_dist.embeddings.sharding import INIT_BLOCK_ROWS, fill_table_init

    t = _table()
    full = torch.empty(t.num_embeddings, t.embedding_dim)
    fill_table_init(full, t, seed=3)
    assert float(full.min()) >= -0.1 and float(full.max()) <= 0.1
    assert abs(float(full.mean())) < 0.01 and float(full.std()) == pytest.approx(0.2 / 12 ** 0.5, rel=0.02)
    # uneven row pieces crossing block borders, and a column piece
    cuts = [0, 7, INIT_BLOCK_ROWS - 1, INIT_BLOCK_ROWS + 5, 3 * INIT_BLOCK_ROWS + 11, t.num_embeddings]
    for lo, hi in zip(cuts, cuts[1:]):
        part = torch.empty(hi - lo, t.embedding_dim)
        fill_table_init(part, t, seed=3, row0=lo)
        torch.testing.assert_close(part, full[lo:hi], rtol=0, atol=0)
    cols = torch.empty(100, 2)
    fill_table_init(cols, t, seed=3, row0=40_000, col0=4)
    torch.testing.assert_close(cols, full[40_000:40_100, 4:6], rtol=0, atol=0)
    # the seed and the table name both change the values
    other = torch.empty(10, t.embedding_dim)
    fill_table_init(other, t, seed=4)
    assert not torch.equal(other, full[:10])
    fill_table_init(other, _table("u"), seed=3)
    assert not torch.equal(other, full[:10])


def test_fill_table_init_refuses_rows_outside_the_table():
    from unirec_dist.embeddings.sharding import fill_table_init

    with pytest.raises(ValueError, match="outside"):
        fill_table_init(torch.empty(10, 6), _table(rows=100), seed=0, row0=95)


def plain_one_process(steps: int):
    """Unsharded reference with the same init: the tables filled by init_tables on CPU."""
    from unirec_dist.embeddings.sharding import find_tables, init_tables

    warnings.filterwarnings("ignore")
    lm = toy.make_lm(table_device=META)     # same dense init as the workers' (no RNG used by tables)
    lm.model.ec.to_empty(device="cpu")
    lm.model.ebc.to_empty(device="cpu")
    init_tables(lm.model, find_tables(lm.model), seed=0)
    return toy.train_plain(lm, steps)


@pytest.fixture(scope="module")
def starts(tmp_path_factory):
    d = tmp_path_factory.mktemp("meta")
    out = {}
    for key, world, cons in (("one", 1, {}), ("rw", 2, RW), ("other", 2, OTHER)):
        out[key] = toy.spawn(world, [("config", {"constraints": cons, "table_device": META}), ("setup", None),
                                     ("eval", "out")], str(d / f"{key}.pt"))
    return out


def test_one_and_two_workers_start_from_the_same_weights(starts):
    ref = plain_one_process(0)
    want = toy.eval_outputs(ref, 0, 1)
    for key in ("one", "rw", "other"):
        torch.testing.assert_close(starts[key]["out"], want, rtol=0, atol=0, msg=key)
    assert starts["rw"]["plan"]["tables"]["item_t"]["sharding_type"] == "row_wise"
    assert starts["other"]["plan"]["tables"]["item_t"]["sharding_type"] == "column_wise"


def test_each_worker_holds_only_its_rows(starts):
    """Row-wise: every rank's local shard is its part of the table, not the whole table."""
    workers = starts["rw"]["workers"]
    assert [w["rank"] for w in workers] == [0, 1]
    for name, n in (("item_t", toy.N_ITEMS), ("user_t", toy.N_USERS)):
        rows = [w["tables"][name]["rows"] for w in workers]
        assert sum(rows) == n and all(0 < r < n for r in rows), (name, rows)
        assert all(w["tables"][name]["bytes"] == w["tables"][name]["rows"] * toy.DIM * 4 for w in workers)
    assert all(w["hwm_mib"] >= w["rss_mib"] > 0 for w in workers)
    one = starts["one"]["workers"][0]["tables"]
    assert one["item_t"]["rows"] == toy.N_ITEMS


def test_first_step_matches_plain_process(tmp_path):
    res = toy.spawn(2, [("config", {"constraints": RW, "table_device": META}), ("fit", (1, None)),
                        ("loss", ("after", 0))], str(tmp_path / "r.pt"))
    lm = plain_one_process(1)
    with torch.no_grad():
        ref = float(lm.loss(toy.rows(0, 0, toy.BATCH)))
    assert res["global_step"] == 1
    assert res["after"] == pytest.approx(ref, rel=1e-5, abs=1e-6)
