"""`unirec recommend` on a prepared synthetic dataset: the Parquet it writes, and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from tests.synthetic import prepared_dataset
from unirec_dist.cli import main
from unirec_dist.data.dataset import PreparedDataset
from unirec_dist.serving.topn import recommend


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepared_dataset(tmp_path_factory.mktemp("recds"), n_users=30, n_items=25, seed=2)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def seen_by_raw_user(ds: PreparedDataset) -> dict[str, set[str]]:
    uv = dict(zip(ds.vocab("user")["index"].to_pylist(), ds.vocab("user")["raw"].to_pylist()))
    iv = dict(zip(ds.vocab("item")["index"].to_pylist(), ds.vocab("item")["raw"].to_pylist()))
    out: dict[str, set[str]] = {}
    for row in ds.table("interactions", columns=["user", "item"]).to_pylist():
        out.setdefault(uv[row["user"]], set()).add(iv[row["item"]])
    return out


def test_all_users_popularity(data_dir, tmp_path, capsys):
    out = tmp_path / "recs.parquet"
    assert main(["recommend", "--baseline", "popularity", "--data", str(data_dir), "--all-users",
                 "--k", "5", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    t = pq.read_table(out)
    # the synthetic items have a title (no genres): it rides beside each item as an optional column
    assert t.schema.names == ["user", "rank", "item", "score", "title"]
    ds = PreparedDataset.open(data_dir)
    seen = seen_by_raw_user(ds)
    rows = t.to_pylist()
    from tests.synthetic import synthetic_tables

    titles = dict(zip(*(synthetic_tables(30, 25, seed=2)[1][c].to_pylist() for c in ("item_id", "title"))))
    assert all(r["title"] == titles[r["item"]] for r in rows)
    users = {r["user"] for r in rows}
    assert users == set(ds.vocab("user")["raw"].to_pylist())
    item_vocab = set(ds.vocab("item")["raw"].to_pylist())
    for u in users:
        mine = [r for r in rows if r["user"] == u]
        unseen = len(item_vocab - seen[u])
        assert [r["rank"] for r in mine] == list(range(1, min(5, unseen) + 1))
        assert all(r["item"] in item_vocab and r["item"] not in seen[u] for r in mine)
        scores = [r["score"] for r in mine]
        assert scores == sorted(scores, reverse=True)


def test_given_users_order_and_include_seen(data_dir, tmp_path, capsys):
    ds = PreparedDataset.open(data_dir)
    raw = ds.vocab("user")["raw"].to_pylist()
    pick = [raw[3], raw[0]]
    ufile = tmp_path / "users.txt"
    ufile.write_text(f"{pick[0]}\n\n{pick[1]}\n")
    out = tmp_path / "r.parquet"
    assert main(["recommend", "--baseline", "popularity", "--data", str(data_dir), "--users", f"@{ufile}",
                 "--k", "3", "--include-seen", "--out", str(out)]) == 0
    t = pq.read_table(out).to_pylist()
    assert [r["user"] for r in t] == [pick[0]] * 3 + [pick[1]] * 3
    # include-seen popularity: identical lists, the 3 most-trained items (ties: lower index)
    assert [r["item"] for r in t[:3]] == [r["item"] for r in t[3:]]


class Lookup(torch.nn.Module):
    max_len = 4

    def __init__(self, users: torch.Tensor, items: torch.Tensor) -> None:
        super().__init__()
        self.u, self.i = users, items

    def item_embeddings(self):
        return self.i

    def query_embeddings(self, batch):
        return self.u[batch.users]


def test_recommend_function_by_hand(data_dir):
    """Scores = user row . item row; check the top-2 against a hand-built ranking."""
    ds = PreparedDataset.open(data_dir)
    n = ds.n_items
    items = torch.zeros((n + 1, 1))
    items[1:, 0] = torch.arange(1, n + 1, dtype=torch.float32)  # item i scores i * u
    users = torch.ones((ds.n_users + 1, 1))
    users[2] = -1.0  # user index 2 prefers low ids
    uv = ds.vocab("user")
    raw_of = dict(zip(uv["index"].to_pylist(), uv["raw"].to_pylist()))
    iv = ds.vocab("item")
    item_raw = dict(zip(iv["index"].to_pylist(), iv["raw"].to_pylist()))
    t = recommend(Lookup(users, items), ds, [raw_of[1], raw_of[2]], k=2, exclude_seen=False)
    assert t["user"].to_pylist() == [raw_of[1]] * 2 + [raw_of[2]] * 2
    assert t["item"].to_pylist() == [item_raw[n], item_raw[n - 1], item_raw[1], item_raw[2]]
    assert t["score"].to_pylist() == [n, n - 1, -1.0, -2.0]
    assert t["rank"].to_pylist() == [1, 2, 1, 2]
    # excluding seen: none of user 1's items appear
    inter = ds.table("interactions", columns=["user", "item"]).to_pylist()
    seen1 = {item_raw[r["item"]] for r in inter if r["user"] == 1}
    t2 = recommend(Lookup(users, items), ds, [raw_of[1]], k=n, exclude_seen=True)
    assert set(t2["item"].to_pylist()) == set(item_raw.values()) - seen1


# ---- bad input ----------------------------------------------------------------------------------


def test_unknown_users_listed_not_dropped(data_dir, tmp_path, capsys):
    ds = PreparedDataset.open(data_dir)
    known = ds.vocab("user")["raw"].to_pylist()[0]
    out = tmp_path / "r.parquet"
    rc = main(["recommend", "--baseline", "popularity", "--data", str(data_dir), "--users", f"{known},ghost,nobody",
               "--k", "3", "--out", str(out)])
    assert rc == 2
    err = one_error_line(capsys)
    assert "ghost" in err and "nobody" in err and "2 user id(s)" in err
    assert f"{known}," not in err
    assert not out.exists()


@pytest.mark.parametrize("k", ["0", "-1", "x"])
def test_bad_k(data_dir, tmp_path, capsys, k):
    out = tmp_path / "r.parquet"
    assert main(["recommend", "--baseline", "popularity", "--data", str(data_dir), "--all-users", "--k", k,
                 "--out", str(out)]) == 2
    assert "--k" in one_error_line(capsys)
    assert not out.exists()


def test_missing_dataset(tmp_path, capsys):
    assert main(["recommend", "--baseline", "popularity", "--data", str(tmp_path / "none"), "--all-users",
                 "--out", str(tmp_path / "r.parquet")]) == 2
    assert "does not exist" in one_error_line(capsys)


def test_checkpoint_without_manifest(data_dir, tmp_path, capsys):
    (tmp_path / "ck").mkdir()
    assert main(["recommend", "--checkpoint", str(tmp_path / "ck"), "--data", str(data_dir), "--all-users",
                 "--out", str(tmp_path / "r.parquet")]) == 2
    assert "manifest.json" in one_error_line(capsys)


def test_checkpoint_vocab_mismatch(data_dir, tmp_path, capsys):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "manifest.json").write_text(json.dumps({"layout_version": 2, "dataset": {"vocab_hash": "ab" * 32}}))
    assert main(["recommend", "--checkpoint", str(ck), "--data", str(data_dir), "--all-users",
                 "--out", str(tmp_path / "r.parquet")]) == 2
    assert "vocab_hash" in one_error_line(capsys)


def test_users_file_missing_and_no_users(data_dir, tmp_path, capsys):
    out = str(tmp_path / "r.parquet")
    assert main(["recommend", "--baseline", "popularity", "--data", str(data_dir), "--users", "@/no/such/file",
                 "--out", out]) == 2
    assert "does not exist" in one_error_line(capsys)
    assert main(["recommend", "--baseline", "popularity", "--data", str(data_dir), "--out", out]) == 2
    assert "--all-users" in one_error_line(capsys)


def test_existing_output(data_dir, tmp_path, capsys):
    out = tmp_path / "r.parquet"
    out.write_bytes(b"old")
    assert main(["recommend", "--baseline", "popularity", "--data", str(data_dir), "--all-users",
                 "--out", str(out)]) == 2
    assert "--overwrite" in one_error_line(capsys)
    assert out.read_bytes() == b"old"


def test_display_fields_chosen_or_none(data_dir, tmp_path, capsys):
    base = ["recommend", "--baseline", "popularity", "--data", str(data_dir), "--users", "1000,1001", "--k", "3"]
    assert main([*base, "--display-fields", "category,title", "--out", str(tmp_path / "a.parquet")]) == 0
    t = pq.read_table(tmp_path / "a.parquet")
    assert t.schema.names == ["user", "rank", "item", "score", "category", "title"]
    assert all(r["category"] in {"books", "games", "music", "film"} for r in t.to_pylist())
    assert main([*base, "--display-fields", "", "--out", str(tmp_path / "b.parquet")]) == 0
    assert pq.read_table(tmp_path / "b.parquet").schema.names == ["user", "rank", "item", "score"]
    capsys.readouterr()
    assert main([*base, "--display-fields", "genres", "--out", str(tmp_path / "c.parquet")]) == 2
    assert "no 'genres'; columns are: " in one_error_line(capsys)
    assert not (tmp_path / "c.parquet").exists()


def test_dataset_without_titles_has_no_display_columns(tmp_path, capsys):
    plain = prepared_dataset(tmp_path / "plain", n_users=10, n_items=12, with_items=False)
    out = tmp_path / "r.parquet"
    assert main(["recommend", "--baseline", "popularity", "--data", str(plain), "--all-users", "--k", "2",
                 "--out", str(out)]) == 0
    assert pq.read_table(out).schema.names == ["user", "rank", "item", "score"]
