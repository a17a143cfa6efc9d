"""`unirec pretrain --workers 2` with `distributed.train_pipeline: sparse_dist` (TorchRec's
TrainPipelineSparseDist) on a local Ray cluster: trains, checkpoints, reports what it pipelined,
loads into one process, and resumes mid-epoch (the pipeline's prefetched batches are re-read)
to the uninterrupted run's weights; combinations it cannot pipeline are refused in one line."""
from __future__ import annotations

import csv
import json

import pytest

from tests.integration.test_pretrain import RUN, args, full_state
from unirec_dist.cli import main

PIPE = [*RUN, "distributed.train_pipeline=sparse_dist", "distributed.keep_last=3", "trainer.loggers=[csv]"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tests.synthetic import prepared_dataset

    return prepared_dataset(tmp_path_factory.mktemp("ds"), n_users=60)


@pytest.fixture(scope="module")
def pipelined_run(dataset, tmp_path_factory):
    """2 workers, 2 epochs of 4 steps, checkpoints at steps 3 (mid-epoch), 6 and 8."""
    out = tmp_path_factory.mktemp("pipelined") / "run"
    return out, main(args(dataset, out, *PIPE))


def losses(run) -> dict[int, float]:
    rows = csv.DictReader((run / "logs" / "metrics.csv").read_text().splitlines())
    return {int(r["step"]): float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")}


def test_pipelined_pretrain_end_to_end(dataset, pipelined_run):
    out, rc = pipelined_run
    assert rc == 0
    m = json.loads((out / "checkpoints" / "final" / "manifest.json").read_text())
    assert m["step"] == 8 and m["world_size"] == 2
    assert m["train_pipeline"] == {"kind": "sparse_dist", "pipelined": ["embedding.item_ec"]}
    assert m["plan"]["tables"]["t_item"]["sharding_type"] == "row_wise"
    assert sorted(losses(out)) == list(range(8))
    summary = json.loads((out / "pretrain.json").read_text())
    # throughput counts the batches the pipeline trained (not the ones it fetched ahead)
    assert all(w["positions"] > 0 and w["timed_steps"] == 5 for w in summary["worker_stats"])
    from unirec_dist.models.factory import load_retriever

    model, manifest = load_retriever(out / "checkpoints" / "final", dataset)
    assert model.item_embeddings().shape[0] == manifest["dataset"]["vocab_sizes"]["item"]


def test_pipelined_run_resumes_mid_epoch_to_the_same_weights(dataset, pipelined_run, tmp_path):
    """From the step-3 checkpoint (the pipeline had fetched batches 4 and 5 of the epoch already):
    the continuation trains steps 3..7 with the straight run's losses and ends with its weights."""
    straight, rc = pipelined_run
    assert rc == 0
    ray_ckpts = {json.loads((p / "manifest.json").read_text())["step"]: p
                 for p in (straight / "ray" / "debug").glob("checkpoint_*") if p.is_dir()}
    assert 3 in ray_ckpts, sorted(ray_ckpts)
    out = tmp_path / "resumed"
    cli = args(dataset, out, *PIPE)
    assert main(cli[:1] + ["--resume-from", str(ray_ckpts[3])] + cli[1:]) == 0
    resumed, ref = losses(out), losses(straight)
    assert sorted(resumed) == [3, 4, 5, 6, 7]
    for step in resumed:
        assert resumed[step] == pytest.approx(ref[step], rel=1e-6), step
    a, b = full_state(out / "checkpoints" / "final", tmp_path), full_state(straight / "checkpoints" / "final", tmp_path)
    assert a.keys() == b.keys()
    for k, v in a.items():
        if v.numel():
            assert float((v.double() - b[k].double()).abs().max()) <= 1e-6, k


@pytest.mark.parametrize("extra, message", [
    (["task.retrieval.loss=full_softmax"], "sparse_dist needs task.retrieval.loss sampled_softmax"),
    (["task.augment.mask=0.2"], "sparse_dist does not run with task.augment"),
    (["model.embedding.item_id=false"], "model.embedding.item_id is false"),
])
def test_what_the_pipeline_cannot_run_is_refused_in_one_line(dataset, tmp_path, capsys, extra, message):
    rc = main(args(dataset, tmp_path / "run", "distributed.train_pipeline=sparse_dist", *extra))
    err = capsys.readouterr().err
    assert rc == 2 and "distributed.train_pipeline" in err and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()

