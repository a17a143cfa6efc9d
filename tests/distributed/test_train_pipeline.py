"""TorchRec's TrainPipelineSparseDist on 2 gloo processes (real DMP sharding, the real model and
task on a synthetic dataset): the pipelined run trains exactly what Lightning's own loop trains
on the same batches (one `model(batch)` lookup, the same loss, no pipeline), step by step, across
an epoch boundary (where the pipeline is dropped and rebuilt), and the pipeline really pipelines
the item table (its input distribution runs one batch ahead; the user table beside it: the MF
resume test in tests/integration/test_pretrain.py). Also the default step's
large-catalogue path with row-wise content tables, which the same gloo size rule broke."""
from __future__ import annotations

import math

import pytest
import torch

from tests.distributed import pipeline_run


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tests.synthetic import prepared_dataset

    return prepared_dataset(tmp_path_factory.mktemp("ds"), n_users=60)


def config(dataset, *overrides: str) -> dict:
    from unirec_dist.config.distributed import load_pretrain_config
    from unirec_dist.config.loader import to_dict

    # 60 users, 8 rows per rank and step over 2 ranks: 4 steps per epoch (the last one 6 rows)
    cfg = load_pretrain_config("configs/pretrain/debug.yaml", [
        f"data.path={dataset}", "data.batch_size=8", "distributed.train_pipeline=sparse_dist",
        "model.encoder.dropout=0.0", *overrides])
    return to_dict(cfg)


def both(cfg: dict, steps: int, tmp_path) -> tuple[dict, dict]:
    pipe = pipeline_run.spawn(cfg, True, steps, str(tmp_path / "pipe.pt"))
    plain = pipeline_run.spawn(cfg, False, steps, str(tmp_path / "plain.pt"))
    return pipe, plain


def assert_same_training(pipe: dict, plain: dict, steps: int) -> None:
    assert pipe["step"] == plain["step"] == steps
    assert len(pipe["losses"]) == len(plain["losses"]) == steps
    assert pipe["losses"] == pytest.approx(plain["losses"], rel=1e-6, abs=1e-7)
    assert pipe["dense"].keys() == plain["dense"].keys() and pipe["dense"]
    for k, v in pipe["dense"].items():
        torch.testing.assert_close(v, plain["dense"][k], rtol=1e-6, atol=1e-7, msg=k)


def test_pipelined_steps_equal_the_plain_loop_across_an_epoch(dataset, tmp_path):
    """6 steps = a whole epoch of 4 and 2 steps of the next. Every table row-wise: the content
    features' pooled tables run unpipelined inside the step and, under gloo, need equal sizes on
    every rank, also for the negatives, whose distinct count differs by rank. HSTU with the time
    bias, negatives shared by groups of 4 positions plus 8 in-batch ones (the loss's own random
    draws, the same in both runs)."""
    tables = ("t_item", "t_title", "t_tags", "t_category")
    cfg = config(dataset, *(f"distributed.sharding.{t}=row_wise" for t in tables),
                 "model.encoder={kind: hstu, num_blocks: 1, num_heads: 1, dqk: 16, dv: 16, dropout: 0.0, "
                 "time_bias: true, time_buckets: 16}",
                 "task.retrieval.negatives_group=4", "task.retrieval.in_batch_negatives=8")
    pipe, plain = both(cfg, 6, tmp_path)
    assert pipe["pipelined"] == ["embedding.item_ec"]
    assert all(pipe["plan"]["tables"][t]["sharding_type"] == "row_wise" for t in tables)
    assert_same_training(pipe, plain, 6)
    assert pipe["losses"][-1] < pipe["losses"][0]      # and it learns: the loss falls


def test_large_catalogue_step_with_row_wise_content_tables(dataset, tmp_path):
    """The default (unpipelined) step on a catalogue above WHOLE_CATALOGUE_MAX_ROWS looks up only
    the step's distinct ids, a count that differs by rank: with row-wise content tables gloo's
    all_gather failed on the sizes ("invalid tensor size"); the ids are now padded to the ranks'
    largest count."""
    from unirec_dist.config.distributed import load_pretrain_config
    from unirec_dist.config.loader import to_dict

    tables = ("t_item", "t_title", "t_tags", "t_category")
    overrides = [f"data.path={dataset}", "data.batch_size=8", "model.encoder.dropout=0.0",
                 "task.retrieval.negatives_group=4", *(f"distributed.sharding.{t}=row_wise" for t in tables)]
    plain = to_dict(load_pretrain_config("configs/pretrain/debug.yaml", overrides))
    res = pipeline_run.spawn(plain, None, 4, str(tmp_path / "default.pt"), whole_catalogue_max_rows=0)
    assert res["step"] == 4 and len(res["losses"]) == 4
    assert all(math.isfinite(t) for t in res["losses"])
