"""TorchRecStrategy on 2 gloo processes: parity with 1 process, DCP save/load, reshard 2->1,
2->2 with another plan, 1->2, and resume of the Lightning loop."""
from __future__ import annotations

import warnings

import pytest
import torch

from tests.distributed import toy

RW = {"item_t": "row_wise", "user_t": "row_wise"}
OTHER = {"item_t": "table_wise", "user_t": "column_wise"}


def plain_one_process(steps: int):
    """The reference: no process group, no DMP, tables optimised in backward like the fused ones."""
    warnings.filterwarnings("ignore")
    return toy.train_plain(toy.make_lm(), steps)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """2 workers, row-wise: one step (of a 3-step epoch), post-step loss, eval outputs.

    The step checkpoint callback writes step-00000001 mid-epoch (and again at the end: same step),
    every tensor in row blocks of at most 256 bytes (DCP's stored chunks, which every reshard test
    below reads back under another layout).
    """
    d = tmp_path_factory.mktemp("a")
    res = toy.spawn(2, [("config", {"constraints": RW, "epoch_len": 3, "ckpt_dir": str(d / "ck"),
                                    "max_chunk_bytes": 256}),
                        ("fit", (1, None)), ("loss", ("after", 0)), ("eval", "out")], str(d / "r.pt"))
    return res, d / "ck" / "step-00000001"


def test_parity_two_sharded_workers_vs_one_process(run_a):
    res, _ = run_a
    lm = plain_one_process(1)
    with torch.no_grad():
        ref = float(lm.loss(toy.rows(0, 0, toy.BATCH)))
    assert res["global_step"] == 1
    assert res["after"] == pytest.approx(ref, rel=1e-5, abs=1e-6)
    # and the plan really sharded both tables over both ranks
    for t in ("item_t", "user_t"):
        assert res["plan"]["tables"][t]["sharding_type"] == "row_wise"
        assert res["plan"]["tables"][t]["ranks"] == [0, 1]


def test_checkpoint_manifest(run_a):
    from unirec_dist.checkpoint.dcp import read_manifest

    _, ck = run_a
    m = read_manifest(ck)
    assert m["world_size"] == 2 and m["step"] == 1 and m["kind"] == "test"
    assert m["plan"]["tables"]["item_t"]["sharding_type"] == "row_wise"
    assert "torchrec" in m["versions"]


def test_two_workers_to_one_plain_process(run_a):
    """2 -> 1: load into a plain (unsharded) module, no process group."""
    from unirec_dist.checkpoint.dcp import load_checkpoint

    res, ck = run_a
    lm = toy.make_lm(seed=7)
    state = {"model": lm.model.state_dict()}
    load_checkpoint(ck, state)
    lm.model.load_state_dict(state["model"])
    got = toy.eval_outputs(lm, 0, 1)
    torch.testing.assert_close(got, res["out"], rtol=0, atol=0)


def test_two_workers_to_two_with_other_plan_and_resume(run_a, tmp_path):
    """2 -> 2 with table_wise/column_wise: same outputs; then resume the loop from A."""
    res, ck = run_a
    out = toy.spawn(2, [("config", {"constraints": OTHER}), ("load", str(ck)), ("eval", "out")],
                    str(tmp_path / "r.pt"))
    torch.testing.assert_close(out["out"], res["out"], rtol=0, atol=0)

    # resume: A stopped mid-epoch after step 1 (of 3); continuing to step 3 under another plan
    # equals 3 straight steps of 1 process (loop, data position, table and dense optimizer state)
    resumed = toy.spawn(2, [("config", {"constraints": OTHER, "epoch_len": 3}), ("fit", (3, str(ck))), ("loss", ("after", 2))],
                        str(tmp_path / "r2.pt"))
    assert resumed["global_step"] == 3
    lm = plain_one_process(3)
    with torch.no_grad():
        ref = float(lm.loss(toy.rows(2, 0, toy.BATCH)))
    assert resumed["after"] == pytest.approx(ref, rel=1e-4, abs=1e-6)


def test_one_worker_to_two(tmp_path):
    """1 -> 2: a world-size-1 DMP checkpoint loads into 2 row-wise workers."""
    ck = tmp_path / "ck1"
    one = toy.spawn(1, [("config", {"constraints": {"item_t": "table_wise"}}), ("fit", (1, None)), ("eval", "out"),
                        ("save", str(ck))], str(tmp_path / "r1.pt"))
    two = toy.spawn(2, [("config", {"constraints": RW}), ("load", str(ck)), ("eval", "out")], str(tmp_path / "r2.pt"))
    torch.testing.assert_close(two["out"], one["out"], rtol=0, atol=0)


def test_tables_are_stored_in_bounded_row_blocks(run_a):
    """Every stored chunk of the tables holds at most 256 bytes (8 rows of 8 floats), so neither
    DCP's writer nor its reader ever copies a whole shard; the reshard tests load these blocks."""
    from unirec_dist.checkpoint.dcp import SafeFileSystemReader

    _, ck = run_a
    md = SafeFileSystemReader(str(ck)).read_metadata().state_dict_metadata
    item = {k: v.chunks for k, v in md.items() if "item_t" in k and len(getattr(v, "size", ())) == 2}
    assert item, sorted(md)
    for k, chunks in item.items():
        assert all(c.sizes[0] * c.sizes[1] * 4 <= 256 for c in chunks), (k, chunks)
        # row-wise over 2 ranks: two 20-row shards, each written as blocks of 8 + 8 + 4 rows
        assert sum(c.sizes[0] for c in chunks) == toy.N_ITEMS and len(chunks) == 6, (k, chunks)
