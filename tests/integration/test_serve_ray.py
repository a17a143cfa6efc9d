"""Ray Serve smoke test: the Recommender's HTTP app as a local deployment with one replica answers
a request like the single-process server does. About 30 s (Ray + Serve start-up on 2 cores)."""
from __future__ import annotations

import socket

import pytest

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")


def _free_port() -> int:
    # Serve's proxy binds the port itself, so it cannot take a pre-bound socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_serve_one_replica_answers(tmp_path):
    from unirec_dist.serving import ray_app
    from unirec_dist.serving.recommender import Recommender
    from unirec_dist.serving.synthetic import make_synthetic_bundle

    bundle = make_synthetic_bundle(tmp_path / "bundle", n_items=200, dim=8, n_users=10, history_len=6)
    rec = Recommender.from_bundle(bundle)
    expected = {u: [r.item for r in rec.recommend(user_id=u, k=4)] for u in [f"u{i}" for i in range(1, 9)]}
    url = ray_app.start(bundle, host="127.0.0.1", port=_free_port(), replicas=1, num_cpus=2, cpus_per_replica=0.5)
    try:
        r = httpx.post(url + "/recommend", json={"user_id": "u2", "k": 4}, timeout=60)
        assert r.status_code == 200, r.text
        assert [x["item"] for x in r.json()["items"]] == expected["u2"]
        # concurrent requests go through @serve.batch together; a bad one fails alone
        from concurrent.futures import ThreadPoolExecutor

        users = [*expected, "ghost"]
        with ThreadPoolExecutor(len(users)) as pool:
            got = list(pool.map(lambda u: httpx.post(url + "/recommend", json={"user_id": u, "k": 4}, timeout=60),
                                users))
        assert got[-1].status_code == 404
        assert {u: [x["item"] for x in g.json()["items"]] for u, g in zip(users[:-1], got[:-1])} == expected
    finally:
        ray_app.stop()
