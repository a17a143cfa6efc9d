"""Time-aware HSTU from checkpoint to HTTP: the bundle keeps each event's time, `recommend` (the
batch top-N) and the Recommender agree at a given query time, the query time changes the answer,
and every bad timestamp in a request is a one-line 422 over real HTTP, never a 5xx."""
from __future__ import annotations

from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

HSTU_TIME = {"kind": "hstu", "num_blocks": 1, "num_heads": 2, "dqk": 4, "dv": 4, "dropout": 0.0,
             "time_bias": True, "time_buckets": 64}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, Path]:
    from tests.integration.test_export import random_model
    from unirec_dist.serving.export import export_bundle

    tmp = tmp_path_factory.mktemp("time")
    ds, ckpt = random_model(tmp, HSTU_TIME, n_users=20, n_items=30)
    return ds, ckpt, export_bundle(ckpt, tmp / "bundle")


def test_bundle_and_batch_topn_agree_at_a_query_time(exported):
    import pyarrow.parquet as pq
    import torch

    from unirec_dist.data.dataset import PreparedDataset
    from unirec_dist.models.factory import load_retriever
    from unirec_dist.serving.recommender import Recommender
    from unirec_dist.serving.topn import all_users, recommend

    ds_dir, ckpt, bundle = exported
    assert "timestamps" in pq.read_table(bundle / "histories.parquet").column_names
    ds = PreparedDataset.open(ds_dir)
    model, _ = load_retriever(ckpt)
    with torch.no_grad():
        for p in model.encoder.parameters():      # time weights drawn at std 0.02 would barely matter
            p.add_(0.5 * torch.randn_like(p))
    users = all_users(ds)[:6]
    at = 1_650_000_000      # after every synthetic event (1.6e9 + ...), before this clock
    ref = recommend(model, ds, users, k=5, at=at).to_pylist()
    rec = Recommender(model, ds.vocab("item"), ds.vocab("user"), _histories(ds))
    got = [(u, r.rank, r.item) for u in users for r in rec.recommend(user_id=u, k=5, at=at)]
    assert got == [(r["user"], r["rank"], r["item"]) for r in ref]
    # a live history with its timestamps is the known user; another query time scores otherwise
    u = users[0]
    hist = rec.known_history(u)
    stamps = _histories(ds).to_pydict()["timestamps"][int(ds.vocab("user").to_pydict()["raw"].index(u))]
    live = rec.recommend(history=hist, timestamps=stamps, k=5, at=at)
    known = rec.recommend(user_id=u, k=5, at=at)
    assert [(r.item, round(r.score, 5)) for r in live] == [(r.item, round(r.score, 5)) for r in known]
    later = rec.recommend(history=hist, timestamps=stamps, k=5, at=at + 10**8)
    assert [r.score for r in later] != [r.score for r in live]


def _histories(ds):
    from unirec_dist.serving.export import full_histories

    return full_histories(ds)


@pytest.fixture(scope="module")
def client(exported):
    from unirec_dist.serving.app import create_app
    from unirec_dist.serving.recommender import Recommender
    from unirec_dist.serving.server import serve_in_thread

    rec = Recommender.from_bundle(exported[2], max_k=20, max_history=32)
    with serve_in_thread(create_app(rec)) as url:
        with httpx.Client(base_url=url, timeout=30) as c:
            yield c, rec


def test_requests_with_times(client):
    c, rec = client
    u = rec.users_vocab.raw(1)
    assert c.post("/recommend", json={"user_id": u, "k": 3}).status_code == 200       # at defaults to now
    hist = rec.known_history(u)[-3:]
    r = c.post("/recommend", json={"history": hist, "timestamps": [1e9, 1e9 + 60.7, 1e9 + 3600], "k": 3,
                                   "at": 1e9 + 7200})
    assert r.status_code == 200, r.text
    assert len(r.json()["items"]) == 3
    r = c.post("/explain", json={"history": hist, "timestamps": [1, 2, 3], "k": 2, "top": 2})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("body,detail", [
    ({"timestamps": [30, 20, 40]}, r"timestamps go backwards at position 1 \(20 < 30\); give the history oldest first"),
    ({}, r"this model reads event times: give timestamps"),
    ({"timestamps": [1, "x", 3]}, r"timestamps\[1\] must be a number of seconds since 1970, got 'x'"),
    ({"timestamps": [1, None, 3]}, r"timestamps\[1\] must be a number"),
    ({"timestamps": [1, True, 3]}, r"timestamps\[1\] must be a number"),
    ({"timestamps": [-5, 1, 2]}, r"timestamps\[0\] \(-5\) is before 1970"),
    ({"timestamps": [1, 2, 1_700_000_000_000]}, r"timestamps\[2\] \(1700000000000\) is in the future .* not milliseconds"),
    ({"timestamps": [1, 2]}, r"timestamps has 2 values but history has 3 items"),
    ({"timestamps": "1,2,3"}, r"timestamps"),
    ({"timestamps": [1, 2, 3], "at": 2}, r"at \(2\) is before the history's last timestamp \(3\)"),
    ({"timestamps": [1, 2, 3], "at": "soon"}, r"at must be a number of seconds since 1970"),
    ({"timestamps": [1, 2, 3], "at": 1e300}, r"at \(1e\+300\) is in the future"),
])
def test_bad_times_are_one_line_422(client, body, detail):
    import re

    c, rec = client
    hist = rec.known_history(rec.users_vocab.raw(1))[-3:]
    for path in ("/recommend", "/explain"):
        r = c.post(path, json={"history": hist, "k": 2, **body})
        assert r.status_code == 422, (path, r.text)
        msg = r.json()["detail"]
        assert "\n" not in msg and re.search(detail, msg), msg


def test_timestamps_belong_to_a_live_history(client):
    c, rec = client
    r = c.post("/recommend", json={"user_id": rec.users_vocab.raw(1), "timestamps": [1], "k": 2})
    assert r.status_code == 422 and "timestamps go with a live history" in r.json()["detail"]
