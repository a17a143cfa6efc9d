"""export -> bundle -> Recommender: the bundle's recommendations are the checkpoint's own top-N
(`load_retriever` + `metrics.topk`, via `serving.topn.recommend`), for every encoder kind; the
bundle loads without pickle; export is atomic and refuses a mismatched dataset."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from unirec_dist.errors import CheckpointError, UnirecError

ENCODERS = {
    "sasrec": {"kind": "sasrec", "num_blocks": 1, "num_heads": 2, "ffn_dim": 16, "dropout": 0.1},
    "hstu": {"kind": "hstu", "num_blocks": 1, "num_heads": 2, "dqk": 4, "dv": 4, "dropout": 0.1},
    "mean_pool": {"kind": "mean_pool", "hidden": [16], "dropout": 0.1},
    "mf": {"kind": "mf"},
    "gru4rec": {"kind": "gru4rec", "hidden_size": 16, "dropout": 0.1},
}


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    from tests.synthetic import prepared_dataset

    return prepared_dataset(tmp_path_factory.mktemp("ds"), n_users=30, n_items=40)


def make_checkpoint(dataset_dir: Path, out: Path, encoder: dict, seed: int = 0) -> Path:
    """A training checkpoint with randomly initialised weights (export does not care about quality)."""
    import torch

    from unirec_dist.checkpoint.dcp import save_checkpoint
    from unirec_dist.config.loader import from_dict, to_dict
    from unirec_dist.config.train import TrainConfig
    from unirec_dist.data.dataset import PreparedDataset
    from unirec_dist.models.factory import build_from_config, dataset_section

    ds = PreparedDataset.open(dataset_dir)
    cfg = from_dict(TrainConfig, {"name": f"t-{encoder['kind']}", "data": {"path": str(dataset_dir), "max_len": 8},
                                  "model": {"embedding": {"dim": 16}, "encoder": encoder}})
    torch.manual_seed(seed)
    section = dataset_section(dataset_dir, ds.manifest)
    model = build_from_config(cfg, section)
    model.embedding.set_item_features(ds.table("items"))
    manifest = {"kind": "train", "config": to_dict(cfg), "dataset": section, "step": 0, "epoch": 0}
    return save_checkpoint(out, {"model": model.state_dict()}, manifest)


def random_model(tmp: Path, encoder: dict, n_users: int, n_items: int) -> tuple[Path, Path]:
    """(prepared synthetic dataset, checkpoint of a randomly initialised `encoder` model on it)
    under `tmp`: the starting point of the serving tests that need their own bundle."""
    from tests.synthetic import prepared_dataset

    ds = prepared_dataset(tmp / "ds", n_users=n_users, n_items=n_items)
    return ds, make_checkpoint(ds, tmp / "ckpt", encoder)


_EXPORTS: dict = {}


def _export(kind: str, dataset_dir: Path, tmp_path_factory) -> tuple[str, Path, Path]:
    if kind not in _EXPORTS:
        from unirec_dist.serving.export import export_bundle

        tmp = tmp_path_factory.mktemp(kind)
        ckpt = make_checkpoint(dataset_dir, tmp / "ckpt", ENCODERS[kind])
        _EXPORTS[kind] = (kind, ckpt, export_bundle(ckpt, tmp / "bundle"))
    return _EXPORTS[kind]


@pytest.fixture(scope="module", params=sorted(ENCODERS))
def exported(request, dataset_dir, tmp_path_factory):
    """(encoder kind, checkpoint, bundle) for every encoder kind."""
    return _export(request.param, dataset_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def sasrec(dataset_dir, tmp_path_factory):
    """The SASRec export only: for the checks that do not depend on the encoder."""
    return _export("sasrec", dataset_dir, tmp_path_factory)


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_bundle_equals_checkpoint_topn(exported, dataset_dir, exclude_seen):
    from unirec_dist.data.dataset import PreparedDataset
    from unirec_dist.models.factory import load_retriever
    from unirec_dist.serving.recommender import Recommender
    from unirec_dist.serving.topn import all_users, recommend

    kind, ckpt, bundle = exported
    ds = PreparedDataset.open(dataset_dir)
    model, _ = load_retriever(ckpt)
    users = all_users(ds)
    ref = recommend(model, ds, users, k=10, exclude_seen=exclude_seen).to_pylist()
    rec = Recommender.from_bundle(bundle)
    got = []
    for u in users:
        got += [{"user": u, "rank": r.rank, "item": r.item, "score": r.score}
                for r in rec.recommend(user_id=u, k=10, exclude_seen=exclude_seen)]
    assert [(r["user"], r["rank"], r["item"]) for r in got] == [(r["user"], r["rank"], r["item"]) for r in ref]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in ref], rtol=1e-5, atol=1e-6)


def test_live_history_equals_known_user(exported):
    from unirec_dist.serving.recommender import Recommender

    kind, _, bundle = exported
    if kind == "mf":
        pytest.skip("MF reads the user id, not the history: a live session has no user vector")
    rec = Recommender.from_bundle(bundle)
    for u in ["1000", "1007", "1029"]:
        hist = rec.known_history(u)
        assert [r.item for r in rec.recommend(history=hist, k=5)] == [r.item for r in rec.recommend(user_id=u, k=5)]


def test_bundle_contents_and_no_pickle(sasrec, dataset_dir, monkeypatch):
    import torch

    from unirec_dist.data.dataset import PreparedDataset
    from unirec_dist.serving.recommender import Recommender

    kind, ckpt, bundle = sasrec
    names = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
    assert names == {"manifest.json", "config.json", "weights.safetensors", "items.safetensors",
                     "vocab/item.parquet", "vocab/user.parquet", "histories.parquet", "display.parquet"}
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["display"] == {"file": "display.parquet", "fields": ["title"]}   # the synthetic items: no genres
    ds = PreparedDataset.open(dataset_dir)
    assert m["dataset"]["vocab_hash"] == ds.vocab_hash
    assert m["checkpoint"]["manifest"]["config"]["model"]["encoder"]["kind"] == kind
    assert m["created_at"] and m["counts"]["items"] == ds.n_items
    assert not list(bundle.parent.glob(".bundle.tmp-*"))

    def forbidden(*a, **k):
        raise AssertionError("bundle loading must not unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    rec = Recommender.from_bundle(bundle)
    assert rec.items.shape == (ds.n_items + 1, 16)
    assert not torch.distributed.is_initialized()
    # names came from the bundle (loaded without pickle): each item's synthetic title
    from tests.synthetic import synthetic_tables

    titles = dict(zip(*(synthetic_tables(30, 40)[1][c].to_pylist() for c in ("item_id", "title"))))
    recs = rec.recommend(user_id=rec.users_vocab.raw(1), k=5)
    assert recs and all(r.display == {"title": titles[r.item]} for r in recs)


def test_export_refuses_existing_output_and_other_dataset(sasrec, tmp_path):
    from tests.synthetic import prepared_dataset
    from unirec_dist.serving.export import export_bundle

    _, ckpt, bundle = sasrec
    before = (bundle / "manifest.json").read_text()
    with pytest.raises(UnirecError, match="already exists"):
        export_bundle(ckpt, bundle)
    assert (bundle / "manifest.json").read_text() == before
    other = prepared_dataset(tmp_path / "other", n_users=12, n_items=15, seed=3)
    with pytest.raises(CheckpointError, match="vocab_hash"):
        export_bundle(ckpt, tmp_path / "b2", dataset=other)
    assert not (tmp_path / "b2").exists()


def test_broken_bundle_is_a_clear_error(sasrec, tmp_path):
    import shutil

    from unirec_dist.serving.recommender import Recommender

    _, _, bundle = sasrec
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / "histories.parquet").unlink()
    with pytest.raises(CheckpointError, match="histories.parquet is missing"):
        Recommender.from_bundle(broken)
    with pytest.raises(CheckpointError, match="does not exist"):
        Recommender.from_bundle(tmp_path / "nope")


def test_cli_export_with_hnsw(sasrec, tmp_path, capsys):
    from unirec_dist.cli import main
    from unirec_dist.serving.recommender import Recommender

    _, ckpt, _ = sasrec
    out = tmp_path / "cli-bundle"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--ann", "hnsw", "--hnsw-m", "8"]) == 0
    assert "bundle" in capsys.readouterr().out and (out / "ann" / "hnsw.faiss").is_file()
    rec = Recommender.from_bundle(out, index="hnsw")
    assert rec.index.params()["M"] == 8 and rec.index_recall is not None
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: output")
    assert main(["export", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
