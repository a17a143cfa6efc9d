"""Names beside ids: `unirec export --display-fields` puts the items' display fields into the bundle,
and /recommend, /explain, `unirec explain` (text and --json) carry them with the raw id kept as
the key; a bundle whose dataset has no titles answers with ids alone."""
from __future__ import annotations

import json

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def named(tmp_path_factory):
    """(bundle exported with title + category, raw item id -> {"title", "category"})."""
    from tests.integration.test_export import ENCODERS, random_model
    from tests.synthetic import synthetic_tables
    from unirec_dist.cli import main

    tmp = tmp_path_factory.mktemp("names")
    _, ckpt = random_model(tmp, ENCODERS["sasrec"], n_users=20, n_items=30)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp / "bundle"),
                 "--display-fields", "title,category"]) == 0
    items = synthetic_tables(20, 30)[1].to_pylist()
    return tmp / "bundle", {r["item_id"]: {"title": r["title"], "category": r["category"]} for r in items}


def test_http_answers_carry_names(named):
    from unirec_dist.serving.app import create_app
    from unirec_dist.serving.config import BatchingConfig
    from unirec_dist.serving.recommender import Recommender
    from unirec_dist.serving.server import serve_in_thread

    bundle, names = named
    rec = Recommender.from_bundle(bundle)
    with serve_in_thread(create_app(rec, batching=BatchingConfig())) as url, httpx.Client(base_url=url) as c:
        body = c.post("/recommend", json={"user_id": rec.users_vocab.raw(2), "k": 4}).json()
        assert len(body["items"]) == 4
        assert all(x["display"] == names[x["item"]] for x in body["items"])   # raw id stays the key
        ex = c.post("/explain", json={"history": ["i001", "i002", "i003"], "k": 2, "top": 2}).json()
        assert all(x["display"] == names[x["item"]] for x in ex["items"])
        assert all(cb["display"] == names[cb["item"]] for x in ex["items"] for cb in x["contributions"])
        assert c.get("/metadata").json()["display_fields"] == ["title", "category"]
        schema = c.get("/openapi.json").json()["components"]["schemas"]
        assert "display" in schema["ItemScore"]["properties"]


def test_explain_cli_text_and_json(named, capsys):
    from unirec_dist.cli import main

    bundle, names = named
    assert main(["explain", "--bundle", str(bundle), "--history", "i004,i005", "-k", "2", "--top", "2"]) == 0
    text = capsys.readouterr().out
    assert f"i004  {names['i004']['title']} ({names['i004']['category']})" in text
    assert main(["explain", "--bundle", str(bundle), "--history", "i004,i005", "-k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    first = out["items"][0]
    assert first["display"] == names[first["item"]] and first["rank"] == 1


def test_export_refuses_an_unknown_display_field(named, tmp_path, capsys):
    from unirec_dist.cli import main

    bundle, _ = named
    ckpt = bundle.parent / "ckpt"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "b"), "--display-fields", "genres"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: --display-fields") and "'genres'" in err
    assert not (tmp_path / "b").exists()


def test_bundle_without_titles_answers_with_ids(tmp_path, capsys):
    from unirec_dist.cli import main
    from unirec_dist.serving.app import create_app
    from unirec_dist.serving.recommender import Recommender
    from unirec_dist.serving.server import serve_in_thread
    from unirec_dist.serving.synthetic import make_synthetic_bundle

    bundle = make_synthetic_bundle(tmp_path / "plain", n_items=50, dim=8, n_users=5, history_len=6, max_len=8)
    rec = Recommender.from_bundle(bundle)
    with serve_in_thread(create_app(rec)) as url, httpx.Client(base_url=url) as c:
        body = c.post("/recommend", json={"user_id": "u1", "k": 3}).json()
        assert [x["display"] for x in body["items"]] == [None] * 3
        assert c.get("/metadata").json()["display_fields"] == []
    assert main(["explain", "--bundle", str(bundle), "--user", "u1", "-k", "1", "--top", "1"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("1.")][0]
    assert line.split()[1].startswith("i") and line.split()[2] == "score"     # the raw id alone
