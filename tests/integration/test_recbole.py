"""`source.kind: recbole`: RecBole atomic files in.

Real data: RecBole's own ML-100K atomic files (taken from the recbole wheel by
`fetch_recbole_ml100k`, checksum pinned, never installed) prepare to the counts, splits and genres
of our own ML-100K loader, with both engines. Bad input (synthetic folders): one `error:` line
naming the file and field, exit 2, nothing written."""
from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pytest
import yaml

from unirec_dist.cli import main
from unirec_dist.data.dataset import PreparedDataset
from unirec_dist.errors import DataError

ROOT = Path(__file__).resolve().parents[2]


def _fetched(fetch):
    try:
        return fetch()
    except DataError as e:
        if "could not fetch" in str(e):
            pytest.skip(f"unreachable here: {e}")
        raise


@pytest.fixture(scope="module")
def prepared_pair(tmp_path_factory):
    """(RecBole atomic files prepared, our ML-100K loader prepared), both with the Arrow engine."""
    from unirec_dist.data.movielens import fetch, fetch_recbole_ml100k

    rb_dir = _fetched(fetch_recbole_ml100k)
    _fetched(lambda: fetch("movielens-100k"))
    tmp = tmp_path_factory.mktemp("recbole")
    assert main(["prepare", "--config", str(ROOT / "configs/datasets/ml-100k-recbole.yaml"),
                 "--out", str(tmp / "rb"), f"source.path={rb_dir}"]) == 0
    assert main(["prepare", "--config", str(ROOT / "configs/datasets/ml-100k.yaml"), "--out", str(tmp / "ml")]) == 0
    return rb_dir, PreparedDataset.open(tmp / "rb"), PreparedDataset.open(tmp / "ml")


def _by_raw(ds: PreparedDataset, entity: str, table, column: str) -> dict[str, object]:
    """{raw id as text: the column's value}, the column's ids turned back into raw values."""
    raw = ds.vocab(entity)["raw"].cast("string").to_pylist()
    return {raw[i - 1]: v for i, v in zip(table[entity].to_pylist(), table[column].to_pylist())}


def test_ml100k_atomic_files_prepare_like_our_loader(prepared_pair):
    _, rb, ml = prepared_pair
    a, b = rb.manifest, ml.manifest
    assert a["source"]["kind"] == "recbole" and [f["role"] for f in a["source"]["files"]] == ["interactions", "items", "users"]
    assert a["counts"] == b["counts"] and a["counts"]["final"] == 100_000
    assert (rb.n_users, rb.n_items) == (ml.n_users, ml.n_items) == (943, 1682)
    assert a["split"] == b["split"] and a["tables"] == b["tables"]
    for name in ("user", "item", "genres", "gender", "age", "occupation"):
        assert a["vocab_sizes"][name] == b["vocab_sizes"][name], name
    # the same leave-one-out target for every user (ids are tokens here, integers there: compare raw)
    iraw = {n: ds.vocab("item")["raw"].cast("string").to_pylist() for n, ds in (("rb", rb), ("ml", ml))}
    targets = {n: {u: iraw[n][t[0] - 1] for u, t in _by_raw(ds, "user", ds.table("test"), "targets").items()}
               for n, ds in (("rb", rb), ("ml", ml))}
    assert targets["rb"] == targets["ml"] and len(targets["rb"]) == 943
    # token_seq `class` -> multi feature: every item has the same genres as u.item's flags
    genres = {}
    for n, ds in (("rb", rb), ("ml", ml)):
        names = ds.vocab("genres")["raw"].to_pylist()
        genres[n] = {k: sorted(names[g - 1] for g in v) for k, v in _by_raw(ds, "item", ds.table("items"), "genres").items()}
    assert genres["rb"] == genres["ml"]
    # token_seq `movie_title` -> text feature: hashed words, as many items titled as ours
    titled = {n: int(pc.sum(pc.greater(pc.list_value_length(ds.table("items")["title"]), 0)).as_py())
              for n, ds in (("rb", rb), ("ml", ml))}
    assert titled["rb"] >= titled["ml"] - 1 and titled["rb"] > 1600


def test_ray_engine_reads_recbole_too(prepared_pair, tmp_path, capsys):
    pytest.importorskip("ray.data")
    import ray

    from unirec_dist.data.ray_engine import _init_ray

    rb_dir, rb, _ = prepared_pair
    bad = _folder(tmp_path, INTER.replace("rating:float", "rating:int"))
    started = _init_ray(None)   # one local Ray for both runs
    try:
        assert main(["prepare", "--config", str(ROOT / "configs/datasets/ml-100k-recbole.yaml"), "--out",
                     str(tmp_path / "ray"), "--engine", "ray", f"source.path={rb_dir}"]) == 0
        capsys.readouterr()
        assert main(["prepare", "--config", str(_yaml(tmp_path, bad)), "--out", str(tmp_path / "bad"),
                     "--engine", "ray"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "toy.inter" in err[0] and "'int'" in err[0] and not (tmp_path / "bad").exists()
    finally:
        if started:
            ray.shutdown()
    r = PreparedDataset.open(tmp_path / "ray")
    assert r.manifest["engine"] == "ray" and r.manifest["counts"] == rb.manifest["counts"]
    assert r.vocab_hash == rb.vocab_hash and r.manifest["split"] == rb.manifest["split"]
    assert r.table("test").equals(rb.table("test"))


# ----------------------------------------------------------------------------- synthetic folders
INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "7\ta\t4\t10\n007\tb\t3\t11\n7\tb\t5\t12\n007\ta\t2\t13\n7\tc\t1\t14\n007\tc\t4\t15\n")
ITEM = ("item_id:token\ttitle:token_seq\ttags:token_seq\tvec:float_seq\n"
        "a\tThe  Red Fox\tx y\t1 2\nb\tBlue\ty\t3 4\nc\tGreen Day\t\t5 6\n")


def _folder(tmp_path: Path, inter: str = INTER, item: str | None = ITEM, name: str = "toy") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / f"{name}.inter").write_text(inter)
    if item is not None:
        (d / f"{name}.item").write_text(item)
    return d


def _yaml(tmp_path: Path, d: Path, features: list[dict] | None = None) -> Path:
    cfg = {"name": "toy", "source": {"kind": "recbole", "path": str(d)},
           "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp", "rating": "rating"},
           "item_features": features if features is not None else [
               {"column": "title", "kind": "text", "buckets": 64},
               {"column": "tags", "kind": "multi"},
               {"column": "vec", "kind": "dense"}]}
    p = tmp_path / "toy.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_types_map_to_feature_kinds(tmp_path):
    d = _folder(tmp_path, "\ufeff" + INTER)   # a byte-order mark (editors on Windows) is not part of a name
    assert main(["prepare", "--config", str(_yaml(tmp_path, d)), "--out", str(tmp_path / "out")]) == 0
    ds = PreparedDataset.open(tmp_path / "out")
    # tokens are strings: "007" and "7" are two users (an integer reading would merge them)
    assert ds.vocab("user")["raw"].to_pylist() == ["007", "7"] and ds.manifest["counts"]["final"] == 6
    items = ds.table("items").to_pylist()
    assert [len(r["title"]) for r in items] == [3, 1, 2]          # token_seq words, doubled spaces ignored
    tags = ds.vocab("tags")["raw"].to_pylist()
    assert [[tags[i - 1] for i in r["tags"]] for r in items] == [["x", "y"], ["y"], []]
    assert [r["vec"] for r in items] == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    assert {f["name"]: f["kind"] for f in ds.features} == {"title": "text", "tags": "multi", "vec": "dense"}


def _fails(capsys, tmp_path: Path, cfg: Path) -> str:
    out = tmp_path / "out"
    rc = main(["prepare", "--config", str(cfg), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return err[0]


def test_unknown_type_suffix(tmp_path, capsys):
    d = _folder(tmp_path, INTER.replace("rating:float", "rating:int"))
    msg = _fails(capsys, tmp_path, _yaml(tmp_path, d))
    assert "toy.inter" in msg and "'rating'" in msg and "'int'" in msg and "token_seq" in msg


def test_header_without_types(tmp_path, capsys):
    d = _folder(tmp_path, item=ITEM.replace("item_id:token\ttitle:token_seq", "item_id\ttitle"))
    msg = _fails(capsys, tmp_path, _yaml(tmp_path, d))
    assert "toy.item" in msg and "'item_id'" in msg and "no type" in msg


@pytest.mark.parametrize("item, words", [
    (ITEM.replace("item_id:token", "movie_id:token"), ("no field 'item_id'", "movie_id:token")),
    (ITEM.replace("item_id:token", "item_id:float").replace("a\t", "1\t").replace("b\t", "2\t").replace("c\t", "3\t"),
     ("'item_id' is float", "token in toy.inter")),
    (ITEM.replace("a\t", "q\t").replace("b\t", "r\t").replace("c\t", "s\t"), ("none of its 3 'item_id' values", "'q'")),
], ids=["key-name", "key-type", "key-values"])
def test_item_key_must_match_inter(tmp_path, capsys, item, words):
    msg = _fails(capsys, tmp_path, _yaml(tmp_path, _folder(tmp_path, item=item)))
    assert "toy.item" in msg and all(w in msg for w in words), msg


def test_feature_kind_against_field_type(tmp_path, capsys):
    d = _folder(tmp_path)
    msg = _fails(capsys, tmp_path, _yaml(tmp_path, d, [{"column": "vec", "kind": "categorical"}]))
    assert "toy.item" in msg and "'vec' is float_seq" in msg and "'categorical'" in msg


def test_non_numeric_float(tmp_path, capsys):
    d = _folder(tmp_path, INTER.replace("\t4\t10\n", "\tfour\t10\n"))
    msg = _fails(capsys, tmp_path, _yaml(tmp_path, d))
    assert "toy.inter" in msg and "'rating'" in msg and "'four'" in msg


def test_folder_without_its_inter_file(tmp_path, capsys):
    d = _folder(tmp_path)
    (d / "toy.inter").rename(d / "other.inter")
    msg = _fails(capsys, tmp_path, _yaml(tmp_path, d))
    assert "toy.inter" in msg and "other.inter" in msg


@pytest.mark.parametrize("source, words", [
    ({"kind": "recbole"}, "source.path: required"),
    ({"kind": "table", "interactions": "x.csv", "path": "folder"}, "source.path: only with source.kind 'recbole'"),
])
def test_source_path_goes_with_kind_recbole(source, words):
    from unirec_dist.config.dataset import DatasetConfig
    from unirec_dist.config.loader import from_dict
    from unirec_dist.errors import ConfigError

    with pytest.raises(ConfigError, match=words):
        from_dict(DatasetConfig, {"name": "x", "source": source})


def test_cli_fetches_the_atomic_files(capsys):
    from unirec_dist.data.movielens import fetch_recbole_ml100k

    d = _fetched(fetch_recbole_ml100k)
    assert main(["data", "fetch", "recbole-ml-100k"]) == 0
    out = capsys.readouterr().out
    assert str(d) in out and f"source.path={d}" in out
    assert sorted(p.name for p in d.iterdir()) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]


def test_out_inside_the_folder_is_refused(tmp_path, capsys):
    d = _folder(tmp_path)
    rc = main(["prepare", "--config", str(_yaml(tmp_path, d)), "--out", str(d / "prepared")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "source.path" in err[0] and "lies inside" in err[0], err
    assert sorted(p.name for p in d.iterdir()) == ["toy.inter", "toy.item"]
