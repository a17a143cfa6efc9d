"""POST /recommend's fast path (serving/app.py RecommendFastPath) against the FastAPI route it
stands in for, both on real servers through a real HTTP client: every body gets the same status,
the same bytes and the same content type from either server; well-formed bodies are answered by
the fast path, everything else is handed to the route (which words the error)."""
from __future__ import annotations

import json

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    from unirec_dist.serving.app import create_app
    from unirec_dist.serving.recommender import Recommender
    from unirec_dist.serving.server import serve_in_thread
    from unirec_dist.serving.synthetic import make_synthetic_bundle

    bundle = make_synthetic_bundle(tmp_path_factory.mktemp("fast") / "bundle", n_items=300, dim=8, n_users=20,
                                   history_len=10, max_len=8)
    rec = Recommender.from_bundle(bundle, max_k=50, max_history=16)
    fast, route = create_app(rec), create_app(rec, fast_path=False)
    with serve_in_thread(fast) as fast_url, serve_in_thread(route) as route_url:
        with httpx.Client(base_url=fast_url, timeout=30) as f, httpx.Client(base_url=route_url, timeout=30) as r:
            yield rec, fast.state.fast_path, f, r


def _bodies(rec) -> tuple[list, list]:
    """(well-formed bodies, bodies the route must see), as (raw bytes, content type)."""
    items = [rec.items_vocab.raw(i) for i in range(1, 8)]
    user = rec.users_vocab.raw(1)
    j = "application/json"
    good = [json.dumps(b).encode() for b in (
        {"history": items[:3]}, {"history": items, "k": 50, "exclude_seen": False},
        {"history": [1, 2] + items[2:4], "k": 1},         # integer ids read as strings (unknown here: 422)
        {"user_id": user, "k": 7}, {"user_id": 1, "history": None, "timestamps": None},
        {"history": items[:2], "timestamps": [1_000_000, 1_000_050], "at": 1_000_100},
        {"history": ["no-such-item"]},                        # 422 from the Recommender
        {"user_id": "no-such-user"},                          # 404
        {"history": items[:2], "timestamps": [2, 1]},         # 422: time goes backwards
        {"history": items[:1], "at": -5},                     # 422: before 1970
    )] + [b'{"history": ["%s"], "at": NaN}' % items[0].encode()]   # 422 (stdlib JSON reads NaN)
    good = [(b, j) for b in good] + [(json.dumps({"history": items[:2]}).encode(), "application/json; charset=utf-8")]
    routed = [json.dumps(b).encode() for b in (
        {"history": items[:2], "k": 10.0}, {"history": items[:2], "k": True}, {"history": items[:2], "k": 0},
        {"history": items[:2], "k": 51}, {"history": items[:2], "exclude_seen": 1}, {"history": []},
        {"history": items * 3}, {"history": [True]}, {"history": ["x" * 300]}, {"history": items[:2], "extra": 1},
        {"user_id": user, "history": items[:1]}, {}, {"user_id": None}, [items[0]], "text", None,
        {"history": items[:2], "timestamps": "now"}, {"user_id": 1.5},
        {"user_id": 10**300}, {"history": [1, 10**300]},          # over 256 characters as strings
    )] + [b"{", b"", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000]
    routed = [(b, j) for b in routed] + [(json.dumps({"history": items[:2]}).encode(), ct)
                                         for ct in (None, "text/plain", "application/x-www-form-urlencoded")]
    return good, routed


def _post(client, body: bytes, ctype: str | None):
    return client.post("/recommend", content=body, headers={} if ctype is None else {"content-type": ctype})


def test_fast_path_answers_as_the_route_does(servers):
    rec, counts, fast, route = servers
    good, routed = _bodies(rec)
    for group, field in ((good, "answered"), (routed, "replayed")):
        for body, ctype in group:
            before = dict(counts)
            a, b = _post(fast, body, ctype), _post(route, body, ctype)
            assert counts[field] == before[field] + 1, (body[:80], ctype)      # who answered
            assert a.status_code == b.status_code and a.status_code < 500, (body[:80], ctype, a.text[:200])
            assert a.content == b.content, (body[:80], ctype)
            assert a.headers["content-type"] == b.headers["content-type"]
            if a.status_code == 200:
                assert "recommend;dur=" in a.headers["server-timing"]
                assert len(a.json()["items"]) == a.json()["k"] or not a.json()["exclude_seen"]


def test_fast_path_keeps_the_body_limit_and_other_routes(servers):
    rec, counts, fast, route = servers
    big = json.dumps({"history": ["1"] * 300_000}).encode()     # over 1 MiB: 413 before parsing
    for c in (fast, route):
        r = _post(c, big, "application/json")
        assert r.status_code == 413 and "larger than" in r.json()["detail"]
    assert fast.get("/recommend").status_code == route.get("/recommend").status_code == 405
    assert fast.get("/health").json() == {"status": "ok"}
    assert fast.get("/openapi.json").json() == route.get("/openapi.json").json()
