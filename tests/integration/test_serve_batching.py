"""Micro-batched /recommend on a real server (uvicorn, loopback) with real concurrent HTTP clients:
answers equal the one-at-a-time answers, requests really share batches, a bad request inside a
batch fails alone (4xx), and the batching settings are validated."""
from __future__ import annotations

import threading

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def sasrec_bundle(tmp_path_factory):
    """A SASRec bundle (random weights): histories of different lengths pad differently in a batch."""
    from tests.integration.test_export import ENCODERS, random_model
    from unirec_dist.serving.export import export_bundle

    tmp = tmp_path_factory.mktemp("batching")
    _, ckpt = random_model(tmp, ENCODERS["sasrec"], n_users=30, n_items=40)
    return export_bundle(ckpt, tmp / "bundle")


def _bodies(rec, n: int) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(0)
    raws = [rec.items_vocab.raw(i) for i in range(1, len(rec.items_vocab) + 1)]
    users = [rec.users_vocab.raw(i) for i in range(1, len(rec.users_vocab) + 1)]
    out = []
    for j in range(n):
        if j % 3 == 0:
            out.append({"user_id": users[j % len(users)], "k": 5})
        else:  # live histories of 1..12 items, some with seen items kept
            h = [raws[i] for i in rng.integers(0, len(raws), size=1 + j % 12)]
            out.append({"history": h, "k": 3 + j % 4, "exclude_seen": j % 2 == 0})
    return out


def _concurrently(url: str, bodies: list[dict], clients: int) -> list[httpx.Response]:
    """Every body POSTed once, from `clients` threads each with its own connection, all released
    together by a barrier so that requests arrive at the same time."""
    out: list = [None] * len(bodies)
    barrier = threading.Barrier(clients)

    def work(c: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            barrier.wait()
            for i in range(c, len(bodies), clients):
                out[i] = http.post("/recommend", json=bodies[i])

    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_batched_answers_equal_unbatched(sasrec_bundle):
    from unirec_dist.serving.app import create_app
    from unirec_dist.serving.config import BatchingConfig
    from unirec_dist.serving.recommender import Recommender
    from unirec_dist.serving.server import serve_in_thread

    rec = Recommender.from_bundle(sasrec_bundle)
    bodies = _bodies(rec, 96)
    with serve_in_thread(create_app(rec)) as url:               # batching off: one at a time
        with httpx.Client(base_url=url, timeout=60) as http:
            alone = [http.post("/recommend", json=b) for b in bodies]
    app = create_app(rec, batching=BatchingConfig(max_batch_size=16, max_wait_ms=20.0))
    with serve_in_thread(app) as url:
        together = _concurrently(url, bodies, clients=16)
    assert all(r.status_code == 200 for r in alone + together)
    stats = app.state.recommend_batcher
    assert stats.items == len(bodies) and stats.batches < len(bodies) / 2   # requests shared batches
    for a, b in zip(alone, together):
        a, b = a.json(), b.json()
        assert [(x["item"], x["rank"]) for x in a["items"]] == [(x["item"], x["rank"]) for x in b["items"]]
        assert [x["score"] for x in a["items"]] == pytest.approx([x["score"] for x in b["items"]], abs=1e-6)
        assert {k: v for k, v in a.items() if k != "items"} == {k: v for k, v in b.items() if k != "items"}


def test_bad_request_in_a_batch_fails_alone(sasrec_bundle):
    from unirec_dist.serving.app import create_app
    from unirec_dist.serving.config import BatchingConfig
    from unirec_dist.serving.recommender import Recommender
    from unirec_dist.serving.server import serve_in_thread

    rec = Recommender.from_bundle(sasrec_bundle, max_k=20)
    good = _bodies(rec, 12)
    # each passes the schema, so it reaches the batch; the Recommender refuses it there
    bad = {3: ({"user_id": "ghost", "k": 5}, 404), 7: ({"history": ["nope", good[1]["history"][0]]}, 422)}
    bodies = [bad[i][0] if i in bad else b for i, b in enumerate(good)]
    app = create_app(rec, batching=BatchingConfig(max_batch_size=64, max_wait_ms=50.0))
    with serve_in_thread(app) as url:
        got = _concurrently(url, bodies, clients=len(bodies))
    assert app.state.recommend_batcher.batches < len(bodies)
    for i, r in enumerate(got):
        if i in bad:
            assert r.status_code == bad[i][1] and r.json()["detail"], r.text
        else:
            assert r.status_code == 200, r.text
            assert [x["item"] for x in r.json()["items"]] == [x.item for x in rec.recommend(**good[i])]


@pytest.mark.parametrize("override, match", [
    ("batching.max_batch_size=0", "max_batch_size"),
    ("batching.max_wait_ms=-1", "max_wait_ms"),
    ("batching.max_wait_ms=5000", "max_wait_ms"),
    ("batching.max_wait=2", "did you mean 'batching.max_wait_ms'"),
])
def test_batching_config_is_validated(override, match):
    from unirec_dist.config.loader import load_config
    from unirec_dist.errors import ConfigError
    from unirec_dist.serving.config import ServeConfig

    with pytest.raises(ConfigError, match=match):
        load_config(ServeConfig, None, ["bundle=b", override])


def test_batching_on_by_default_and_can_be_turned_off():
    from unirec_dist.config.loader import load_config
    from unirec_dist.serving.config import ServeConfig

    assert load_config(ServeConfig, None, ["bundle=b"]).batching.max_batch_size == 64
    assert load_config(ServeConfig, None, ["bundle=b", "batching=null"]).batching is None
