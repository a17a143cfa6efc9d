"""`unirec evaluate` on a prepared synthetic dataset: results, JSON, and every bad input (exit 2)."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from tests.synthetic import prepared_dataset
from unirec_dist.cli import main
from unirec_dist.data.dataset import PreparedDataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepared_dataset(tmp_path_factory.mktemp("evalds"), n_users=60, n_items=40, seed=1)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: "), err
    assert "\n" not in err, err
    assert "Traceback" not in err
    return err


def popularity_reference(ds: PreparedDataset, k: int, mask_seen: bool) -> tuple[float, float]:
    """HR@k and MRR@k of the popularity baseline, computed independently with numpy:
    a full argsort per user of (-count, id), history removed when masking."""
    train = pc.list_flatten(ds.table("train")["items"]).to_numpy()
    counts = np.bincount(train, minlength=ds.n_items + 1).astype(float)
    test = ds.table("test").to_pylist()
    hr = rr = 0.0
    for row in test:
        score = counts.copy()
        score[0] = -math.inf
        if mask_seen:
            score[row["history"]] = -math.inf
        ids = np.arange(ds.n_items + 1)
        order = np.lexsort((ids, -score))  # primary: score desc; ties: lower id
        order = [i for i in order if score[i] > -math.inf][:k]
        ranks = [order.index(t) + 1 for t in row["targets"] if t in order]
        if ranks:
            hr += 1
            rr += 1 / min(ranks)
    return hr / len(test), rr / len(test)


@pytest.mark.parametrize("mask", [False, True])
def test_popularity_baseline_matches_reference_and_writes_json(data_dir, tmp_path, capsys, mask):
    out = tmp_path / "res.json"
    argv = ["evaluate", "--baseline", "popularity", "--data", str(data_dir), "--k", "5,10", "--out", str(out)]
    if mask:
        argv.append("--mask-seen")
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "full ranking over" in printed
    assert ("seen items masked" if mask else "seen items NOT masked") in printed
    assert "NDCG" in printed and "@10" in printed
    report = json.loads(out.read_text())
    ds = PreparedDataset.open(data_dir)
    assert report["protocol"]["mask_seen"] is mask
    assert report["protocol"]["n_items"] == ds.n_items
    assert report["protocol"]["queries"] == ds.table("test").num_rows
    assert report["model"] == {"baseline": "popularity"}
    hr, mrr = popularity_reference(ds, 10, mask)
    assert report["metrics"]["HR@10"] == pytest.approx(hr)
    assert report["metrics"]["MRR@10"] == pytest.approx(mrr)
    assert set(report["metrics"]) == {f"{m}@{k}" for m in ("HR", "Recall", "NDCG", "MRR", "Precision", "Coverage") for k in (5, 10)}


def test_valid_split_and_k_beyond_catalogue(data_dir, tmp_path, capsys):
    out = tmp_path / "v.json"
    assert main(["evaluate", "--baseline", "popularity", "--data", str(data_dir), "--split", "valid",
                 "--k", "1000", "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["protocol"]["split"] == "valid"
    # K >= N: every target is found, every item is listed
    assert m["metrics"]["HR@1000"] == pytest.approx(1.0)
    assert m["metrics"]["Coverage@1000"] == pytest.approx(1.0)


# ---- bad input: one line, exit code 2, nothing written ----------------------------------------


def test_missing_dataset(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["evaluate", "--baseline", "popularity", "--data", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "does not exist" in one_error_line(capsys)
    assert not out.exists()


def test_dataset_dir_without_manifest(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "--baseline", "popularity", "--data", str(tmp_path / "empty")]) == 2
    assert "manifest.json" in one_error_line(capsys)


def test_checkpoint_without_manifest(data_dir, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / ".metadata").write_bytes(b"")
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data_dir)]) == 2
    assert "manifest.json" in one_error_line(capsys)


def test_checkpoint_missing(data_dir, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nope"), "--data", str(data_dir)]) == 2
    assert "does not exist" in one_error_line(capsys)


def fake_checkpoint(path: Path, vocab_hash: str, data_dir: Path | None = None) -> Path:
    path.mkdir(parents=True)
    manifest = {"layout_version": 2, "kind": "pretrain", "dataset": {"vocab_hash": vocab_hash}}
    if data_dir is not None:
        manifest["dataset"]["path"] = str(data_dir)
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_checkpoint_vocab_mismatch(data_dir, tmp_path, capsys):
    ckpt = fake_checkpoint(tmp_path / "ckpt", "0" * 64)
    out = tmp_path / "r.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data_dir), "--out", str(out)]) == 2
    assert "vocab_hash" in one_error_line(capsys)
    assert not out.exists()


def test_vocab_mismatch_with_dataset_path_from_manifest(data_dir, tmp_path, capsys):
    ckpt = fake_checkpoint(tmp_path / "ckpt", "f" * 64, data_dir=data_dir)
    assert main(["evaluate", "--checkpoint", str(ckpt)]) == 2
    assert "does not match" in one_error_line(capsys)


@pytest.mark.parametrize("k", ["0", "-5", "ten", "10,0", ""])
def test_bad_k(data_dir, tmp_path, capsys, k):
    assert main(["evaluate", "--baseline", "popularity", "--data", str(data_dir), "--k", k]) == 2
    assert "--k" in one_error_line(capsys)


def test_no_model_given(data_dir, capsys):
    assert main(["evaluate", "--data", str(data_dir)]) == 2
    assert "--checkpoint" in one_error_line(capsys)


def test_baseline_without_data(capsys):
    assert main(["evaluate", "--baseline", "popularity"]) == 2
    assert "--data" in one_error_line(capsys)


def test_existing_output_needs_overwrite(data_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    out.write_text("keep me")
    assert main(["evaluate", "--baseline", "popularity", "--data", str(data_dir), "--out", str(out)]) == 2
    assert "--overwrite" in one_error_line(capsys)
    assert out.read_text() == "keep me"
    assert main(["evaluate", "--baseline", "popularity", "--data", str(data_dir), "--out", str(out), "--overwrite"]) == 0
    assert "metrics" in json.loads(out.read_text())


def test_missing_split_file(data_dir, tmp_path, capsys):
    copy = tmp_path / "ds"
    shutil.copytree(data_dir, copy)
    (copy / "valid.parquet").unlink()
    assert main(["evaluate", "--baseline", "popularity", "--data", str(copy), "--split", "valid"]) == 2
    assert "valid" in one_error_line(capsys)


# ---- a real checkpoint: the debug config trained on the synthetic dataset ----------------------


@pytest.fixture(scope="module")
def debug_checkpoint(data_dir, tmp_path_factory) -> Path:
    train = pytest.importorskip("unirec_dist.training.train", reason="training not available")
    from unirec_dist.config.loader import load_config
    from unirec_dist.config.train import TrainConfig

    out = tmp_path_factory.mktemp("debugrun")
    cfg = load_config(TrainConfig, Path(__file__).resolve().parents[2] / "configs/pretrain/debug.yaml",
                      [f"data.path={data_dir}", f"trainer.out_dir={out}"])
    return Path(train.train(cfg))


def test_checkpoint_evaluate_and_recommend(debug_checkpoint, data_dir, tmp_path, capsys):
    import pyarrow.parquet as pq

    from unirec_dist.metrics.evaluate import evaluate
    from unirec_dist.models.factory import load_retriever

    out = tmp_path / "ck.json"
    # --data defaults to the dataset recorded in the checkpoint
    assert main(["evaluate", "--checkpoint", str(debug_checkpoint), "--k", "10,50", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"checkpoint {debug_checkpoint}" in printed and "seen items NOT masked" in printed
    report = json.loads(out.read_text())
    assert report["model"]["checkpoint"] == str(debug_checkpoint)
    model, _ = load_retriever(debug_checkpoint)
    ds = PreparedDataset.open(data_dir)
    again = evaluate(model, ds, "test", ks=(10, 50))
    assert report["metrics"] == pytest.approx(again["metrics"], abs=1e-12)
    assert 0.0 <= report["metrics"]["NDCG@10"] <= report["metrics"]["HR@10"] <= report["metrics"]["HR@50"] <= 1.0

    recs = tmp_path / "recs.parquet"
    assert main(["recommend", "--checkpoint", str(debug_checkpoint), "--all-users", "--k", "4",
                 "--out", str(recs)]) == 0
    t = pq.read_table(recs)
    assert t.num_rows == 4 * ds.n_users
    assert t["rank"].to_pylist()[:4] == [1, 2, 3, 4]


def test_bad_threads_and_batch_size(data_dir, capsys):
    assert main(["evaluate", "--baseline", "popularity", "--data", str(data_dir), "--threads", "0"]) == 2
    assert "--threads" in one_error_line(capsys)
    assert main(["evaluate", "--baseline", "popularity", "--data", str(data_dir), "--batch-size", "0"]) == 2
    assert "--batch-size" in one_error_line(capsys)
