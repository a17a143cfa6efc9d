"""The HTTP API on a real server (uvicorn, loopback, free port) through a real HTTP client, and the
`unirec serve / explain / export` commands end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from unirec_dist.serving.synthetic import make_synthetic_bundle

    return make_synthetic_bundle(tmp_path_factory.mktemp("srv") / "bundle", n_items=400, dim=8, n_users=25,
                                 history_len=10, max_len=8)


@pytest.fixture(scope="module")
def client(bundle):
    from unirec_dist.serving.app import create_app
    from unirec_dist.serving.recommender import Recommender
    from unirec_dist.serving.server import serve_in_thread

    rec = Recommender.from_bundle(bundle, max_k=50, max_history=32)
    with serve_in_thread(create_app(rec)) as url:
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=url, timeout=30) as c:
            yield c, rec


def test_recommend_known_user_and_history(client):
    c, rec = client
    r = c.post("/recommend", json={"user_id": "u4", "k": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["item"] for x in body["items"]] == [x.item for x in rec.recommend(user_id="u4", k=7)]
    assert body["history_length"] == len(rec.known_history("u4")) and body["index"] == "exact"
    assert r.headers["server-timing"].startswith("recommend;dur=")
    r = c.post("/recommend", json={"history": ["i3", "i9"], "k": 3, "exclude_seen": False})
    assert r.status_code == 200 and len(r.json()["items"]) == 3 and r.json()["user_id"] is None


def test_explain_over_http(client):
    c, rec = client
    r = c.post("/explain", json={"user_id": "u2", "k": 2, "top": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "occlusion" and body["per_item"] is True
    assert len(body["items"]) == 2 and all(len(x["contributions"]) == 3 for x in body["items"])
    assert body == rec.explain(user_id="u2", k=2, top=3).to_dict()


def test_health_metadata_and_schema(client):
    c, _ = client
    assert c.get("/health").json() == {"status": "ok"}
    m = c.get("/metadata").json()
    assert m["vocab_sizes"] == {"item": 401, "user": 26} and m["index"]["kind"] == "exact"
    assert m["versions"]["bundle_format"] and "manifest" not in m
    paths = c.get("/openapi.json").json()["paths"]
    assert {"/recommend", "/explain", "/health", "/metadata"} <= set(paths)


@pytest.mark.parametrize("body, status, match", [
    ({"user_id": "ghost"}, 404, "unknown user_id"),
    ({"history": ["i1", "ghost"]}, 422, "unknown item"),
    ({"history": []}, 422, "history"),
    ({"history": ["i1"] * 33}, 422, "history"),
    ({"user_id": "u1", "k": 0}, 422, "k:"),
    ({"user_id": "u1", "k": 51}, 422, "k:"),
    ({"user_id": "u1", "k": "lots"}, 422, "k:"),
    ({"user_id": "u1", "history": ["i1"]}, 422, "exactly one"),
    ({}, 422, "exactly one"),
    ({"user_id": "u1", "extra": 1}, 422, "extra"),
    ({"user_id": None, "history": None}, 422, "exactly one"),
    ({"history": [True]}, 422, "string or an integer"),
])
def test_validation_is_4xx_with_a_message(client, body, status, match):
    c, _ = client
    r = c.post("/recommend", json=body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    assert match.lower() in detail.lower()


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[]", b"null", b"\xff\xfe", b'{"user_id": "u1", "k": 1e999}'])
def test_malformed_bodies_are_4xx(client, raw):
    c, _ = client
    r = c.post("/recommend", content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["detail"]


def test_explain_validation(client):
    c, _ = client
    assert c.post("/explain", json={"user_id": "u1", "method": "attention"}).status_code == 422
    assert c.post("/explain", json={"user_id": "u1", "method": "nope"}).status_code == 422
    assert c.post("/explain", json={"user_id": "u1", "top": 0}).status_code == 422
    assert c.post("/explain", json={"user_id": "u1", "items": []}).status_code == 422


def test_cli_explain(bundle, capsys):
    from unirec_dist.cli import main

    assert main(["explain", "--bundle", str(bundle), "--user", "u3", "-k", "2", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "method: occlusion" in out and "  1. i" in out and "  2. i" in out
    assert main(["explain", "--bundle", str(bundle), "--history", "i1,i2", "--json", "--method", "similarity"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "similarity"
    assert main(["explain", "--bundle", str(bundle), "--user", "ghost"]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown user_id 'ghost'"
    assert main(["explain", "--bundle", str(bundle.parent / "missing"), "--user", "u1"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_serve_answers_on_loopback(bundle):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "unirec_dist", "serve", "--bundle", str(bundle), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "serving" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
        url = line.split(" on ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        r = httpx.post(url + "/recommend", json={"user_id": "u1", "k": 2}, timeout=30)
        assert r.status_code == 200 and len(r.json()["items"]) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)
