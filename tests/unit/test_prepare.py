"""prepare: cleaning, encoding, k-core, splits, sequences, feature tables; expectations by hand."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from unirec_dist.config.dataset import DatasetConfig
from unirec_dist.config.loader import from_dict, load_config
from unirec_dist.data import features as F
from unirec_dist.data import prepare as P
from unirec_dist.data.dataset import PreparedDataset
from unirec_dist.errors import DataError, UnirecError

SMALL_CSV = """user,item,ts,rating
b,x,3,5
a,y,1,4
a,x,2,3
a,x,2,3
a,z,5,1
b,y,1,2
,x,7,1
c,,8,1
c,x,,2
a,w,4,5
c,z,9,3
"""


def _cfg(path: Path, **extra) -> DatasetConfig:
    data = {"name": "t", "source": {"interactions": str(path)},
            "columns": {"user": "user", "item": "item", "timestamp": "ts", "rating": "rating"}}
    data.update(extra)
    return from_dict(DatasetConfig, data, where="test.yaml")


def _prep(tmp_path: Path, csv: str, **extra) -> PreparedDataset:
    src = tmp_path / "log.csv"
    src.write_text(csv)
    out = P.prepare(_cfg(src, **extra), tmp_path / "out")
    return PreparedDataset.open(out)


def test_clean_encode_sequences_leave_one_out(tmp_path):
    ds = _prep(tmp_path, SMALL_CSV)
    c = ds.manifest["counts"]
    assert (c["raw"], c["dropped_null_ids"], c["dropped_null_timestamps"], c["dropped_duplicates"]) == (11, 2, 1, 1)
    assert c["final"] == 7 and (c["users"], c["items"]) == (3, 4)
    # vocab sorted by raw value, 0 reserved for padding
    assert ds.vocab("user").to_pydict() == {"raw": ["a", "b", "c"], "index": [1, 2, 3]}
    assert ds.vocab("item").to_pydict() == {"raw": ["w", "x", "y", "z"], "index": [1, 2, 3, 4]}
    assert ds.manifest["vocab_sizes"]["user"] == 4 and ds.manifest["vocab_sizes"]["item"] == 5
    inter = ds.table("interactions")
    # sorted by (user, timestamp, item): a: y@1 x@2 w@4 z@5; b: y@1 x@3; c: z@9
    assert inter["user"].to_pylist() == [1, 1, 1, 1, 2, 2, 3]
    assert inter["item"].to_pylist() == [3, 2, 1, 4, 3, 2, 4]
    assert inter["timestamp"].to_pylist() == [1, 2, 4, 5, 1, 3, 9]
    train = ds.table("train")
    assert train["user"].to_pylist() == [1, 2, 3]
    assert train["items"].to_pylist() == [[3, 2], [3, 2], [4]]   # a: last two held out; b, c < 3 events
    assert train["timestamps"].to_pylist() == [[1, 2], [1, 3], [9]]
    assert train["ratings"].to_pylist() == [[4.0, 3.0], [2.0, 5.0], [3.0]]
    valid, test = ds.table("valid"), ds.table("test")
    # history and target timestamps travel with the queries (an encoder's time bias reads them)
    assert valid.to_pydict() == {"user": [1], "history": [[3, 2]], "targets": [[1]], "target_ratings": [[5.0]],
                                 "history_timestamps": [[1, 2]], "target_timestamps": [[4]]}
    assert test.to_pydict() == {"user": [1], "history": [[3, 2, 1]], "targets": [[4]], "target_ratings": [[1.0]],
                                "history_timestamps": [[1, 2, 4]], "target_timestamps": [[5]]}
    assert ds.manifest["split"]["users"] == {"train": 3, "valid": 1, "test": 1}
    assert ds.table("train").schema.field("items").type == pa.list_(pa.int32())


def test_max_history_keeps_last_items(tmp_path):
    ds = _prep(tmp_path, SMALL_CSV, split={"protocol": "leave_one_out", "max_history": 1})
    assert ds.table("train")["items"].to_pylist() == [[2], [2], [4]]
    assert ds.table("test")["history"].to_pylist() == [[1]]


def test_rating_filter_counts(tmp_path):
    ds = _prep(tmp_path, SMALL_CSV, filter={"min_rating": 3})
    # of the 7 clean rows, ratings 2 (b,y) and 1 (a,z) go
    assert ds.manifest["counts"]["dropped_rating_filter"] == 2
    # a keeps y x w (train y, valid x, test w); b keeps x; c keeps z
    assert ds.table("train")["items"].to_pylist() == [[3], [2], [4]]
    assert ds.vocab("item")["raw"].to_pylist() == ["w", "x", "y", "z"]   # z survives via c


def test_kcore_iterates_until_stable():
    # u1: i1 i2; u2: i1 i2; u3: i1 i3; u4: i3 -> round 1 drops u4, round 2 drops u3-i3 (i3 now 1),
    # round 3 drops u3-i1 (u3 now 1); then stable.
    u = np.array([1, 1, 2, 2, 3, 3, 4])
    i = np.array([1, 2, 1, 2, 1, 3, 3])
    keep, rounds = P.kcore_mask(u, i, 2, 2)
    assert keep.tolist() == [True, True, True, True, False, False, False]
    assert rounds == 3
    keep, rounds = P.kcore_mask(u, i, 1, 1)
    assert keep.all() and rounds == 0


def test_kcore_in_prepare_compacts_ids(tmp_path):
    csv = "user,item,ts\n" + "".join(f"u{a},i{b},{t}\n" for t, (a, b) in enumerate(
        [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 3), (4, 3)]))
    src = tmp_path / "log.csv"
    src.write_text(csv)
    cfg = from_dict(DatasetConfig, {"name": "k", "source": {"interactions": str(src)},
                                    "columns": {"user": "user", "item": "item", "timestamp": "ts"},
                                    "filter": {"user_core": 2, "item_core": 2}})
    ds = PreparedDataset.open(P.prepare(cfg, tmp_path / "out"))
    assert ds.manifest["counts"]["after_kcore"] == {"rows": 4, "dropped": 3, "iterations": 3}
    assert ds.vocab("user")["raw"].to_pylist() == ["u1", "u2"]
    assert ds.vocab("item")["raw"].to_pylist() == ["i1", "i2"]
    assert ds.table("train")["items"].to_pylist() == [[1, 2], [1, 2]]
    assert "rating" not in ds.table("interactions").column_names


def test_numeric_ids_sorted_numerically(tmp_path):
    ds = _prep(tmp_path, "user,item,ts,rating\n10,100,1,1\n9,20,2,1\n10,3,3,1\n")
    assert ds.vocab("user")["raw"].to_pylist() == ["9", "10"]
    assert ds.vocab("item")["raw"].to_pylist() == ["3", "20", "100"]


def test_temporal_split(tmp_path):
    rows = [("a", 1, "p"), ("a", 3, "q"), ("a", 6, "r"), ("a", 9, "s"), ("b", 2, "q"), ("b", 4, "r"),
            ("b", 7, "p"), ("c", 5, "s"), ("c", 8, "p"), ("c", 10, "q")]
    csv = "user,ts,item\n" + "".join(f"{u},{t},{i}\n" for u, t, i in rows)
    src = tmp_path / "log.csv"
    src.write_text(csv)
    cfg = from_dict(DatasetConfig, {"name": "t", "source": {"interactions": str(src)},
                                    "columns": {"user": "user", "item": "item", "timestamp": "ts"},
                                    "split": {"protocol": "temporal", "valid_fraction": 0.2, "test_fraction": 0.2}})
    ds = PreparedDataset.open(P.prepare(cfg, tmp_path / "out"))
    # ts 1..10, 'lower' quantiles: 0.6 -> 6, 0.8 -> 8
    assert (ds.manifest["split"]["cut_valid"], ds.manifest["split"]["cut_test"]) == (6, 8)
    assert ds.table("train").to_pydict()["items"] == [[1, 2], [2, 3], [4]]
    assert ds.table("valid").to_pydict() == {"user": [1, 2], "history": [[1, 2], [2, 3]], "targets": [[3], [1]],
                                             "history_timestamps": [[1, 3], [2, 4]], "target_timestamps": [[6], [7]]}
    assert ds.table("test").to_pydict() == {"user": [1, 3], "history": [[1, 2, 3], [4]], "targets": [[4], [1, 2]],
                                            "history_timestamps": [[1, 3, 6], [5]], "target_timestamps": [[9], [8, 10]]}


def fnv1a64_reference(s: str) -> int:
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) % (1 << 64)
    return h


def test_fnv1a64_known_vectors():
    got = F.fnv1a64(pa.array(["", "a", "foobar"]))
    # published FNV-1a 64 test vectors
    assert got.tolist() == [0xCBF29CE484222325, 0xAF63DC4C8601EC8C, 0x85944171F73967E8]


def test_text_hashing_tokens():
    col = pa.array(["The Café, 2049!", None, "  ", "a b c d"])
    tokens, parents = F.tokenize(col, max_tokens=3)
    assert tokens.to_pylist() == ["the", "café", "2049", "a", "b", "c"]
    assert parents.tolist() == [0, 0, 0, 3, 3, 3]
    ids = F.encode_text(col, buckets=100, max_tokens=3).to_pylist()
    h = lambda t: 1 + fnv1a64_reference(t) % 99  # noqa: E731
    assert ids == [[h("the"), h("café"), h("2049")], [], [], [h("a"), h("b"), h("c")]]
    assert all(1 <= v <= 99 for row in ids for v in row)


def test_multi_split_and_truncate():
    vals, parents = F.split_multi(pa.array(["a|b||c ", None, "d"]), "|", 2, "w")
    assert vals.to_pylist() == ["a", "b", "d"] and parents.tolist() == [0, 0, 2]
    vals, parents = F.split_multi(pa.array([["x", "y"], [], None]), "|", 5, "w")
    assert vals.to_pylist() == ["x", "y"] and parents.tolist() == [0, 0]


def test_item_table_alignment(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user,item,ts\nu,B,1\nu,A,2\nu,C,3\n")
    items = tmp_path / "items.jsonl"
    # A twice (first wins), C absent, Z unknown to the log
    items.write_text("\n".join(json.dumps(r) for r in [
        {"item": "A", "cat": "k2", "tags": "t1|t2", "title": "Hello World", "vec": [1.0, 2.0]},
        {"item": "B", "cat": "k1", "tags": "t2", "title": "hello", "vec": [3.0, 4.0]},
        {"item": "A", "cat": "k9", "tags": "", "title": "", "vec": [0.0, 0.0]},
        {"item": "Z", "cat": "k3", "tags": "t3", "title": "zzz", "vec": [5.0, 6.0]},
    ]) + "\n")
    cfg = from_dict(DatasetConfig, {
        "name": "i", "source": {"interactions": str(log), "items": str(items)},
        "columns": {"user": "user", "item": "item", "timestamp": "ts"},
        "item_features": [{"column": "cat", "kind": "categorical"}, {"column": "tags", "kind": "multi"},
                          {"column": "title", "kind": "text", "buckets": 50}, {"column": "vec", "kind": "dense"}]})
    ds = PreparedDataset.open(P.prepare(cfg, tmp_path / "out"))
    it = ds.table("items")
    assert it["item"].to_pylist() == [1, 2, 3]                       # A, B, C
    assert ds.vocab("cat")["raw"].to_pylist() == ["k1", "k2"]          # only categories of known items
    assert it["cat"].to_pylist() == [2, 1, 0]                          # C missing -> 0
    assert ds.vocab("tags")["raw"].to_pylist() == ["t1", "t2"]
    assert it["tags"].to_pylist() == [[1, 2], [2], []]
    h = lambda t: 1 + fnv1a64_reference(t) % 49  # noqa: E731
    assert it["title"].to_pylist() == [[h("hello"), h("world")], [h("hello")], []]
    assert it.schema.field("vec").type == pa.list_(pa.float32(), 2)
    assert it["vec"].to_pylist() == [[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]
    assert ds.manifest["tables"]["items"] == {"rows": 4, "matched": 2, "unknown_keys": 1, "duplicate_keys": 1,
                                              "missing": 1}
    feats = {f["name"]: f for f in ds.manifest["features"]}
    assert feats["cat"]["cardinality"] == 3 and feats["tags"]["cardinality"] == 3
    assert feats["title"]["cardinality"] == 50 and feats["vec"]["dim"] == 2


def test_synthetic_helper_and_manifest(tmp_path):
    from tests.synthetic import prepared_dataset

    ds = PreparedDataset.open(prepared_dataset(tmp_path))
    m = ds.manifest
    assert m["format_version"] == 1 and m["name"] == "synthetic"
    assert ds.n_users == 50 and m["split"]["users"] == {"train": 50, "valid": 50, "test": 50}
    assert m["counts"]["final"] == 400
    # every user: train + valid target + test target = all of the user's interactions
    lens = ds.table("train")["items"].to_pylist()
    assert sum(len(x) for x in lens) + 2 * 50 == 400
    # checksums of inputs and the vocab hash are recorded and reproducible
    assert all(len(f["sha256"]) == 64 for f in m["source"]["files"])
    assert m["vocab_hash"] == P.vocab_hash(ds.vocab("user"), ds.vocab("item"))
    assert set(m["schema"]) >= {"train.parquet", "valid.parquet", "test.parquet", "items.parquet"}


def test_vocab_hash_changes_with_vocab():
    a = P.vocab_table(pa.array(["1", "2"]))
    b = P.vocab_table(pa.array(["1", "3"]))
    c = P.vocab_table(pa.array(["12"]))
    assert P.vocab_hash(a, a) != P.vocab_hash(a, b)
    assert P.vocab_hash(a, a) != P.vocab_hash(c, a)    # lengths are part of the hash
    assert P.vocab_hash(a, b) == P.vocab_hash(a, b)


def test_parquet_input_and_same_output_as_csv(tmp_path):
    from tests.synthetic import write_synthetic_log

    outs = []
    for fmt in ("csv", "parquet"):
        cfg = load_config(DatasetConfig, write_synthetic_log(tmp_path / fmt, fmt=fmt, n_users=20))
        outs.append(PreparedDataset.open(P.prepare(cfg, tmp_path / f"out-{fmt}")))
    for name in ("train", "valid", "test", "items"):
        assert outs[0].table(name).equals(outs[1].table(name))


def test_failure_leaves_no_output(tmp_path, monkeypatch):
    src = tmp_path / "log.csv"
    src.write_text(SMALL_CSV)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(P, "write_prepared", boom)
    with pytest.raises(RuntimeError):
        P.prepare(_cfg(src), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]


def test_overwrite(tmp_path):
    src = tmp_path / "log.csv"
    src.write_text(SMALL_CSV)
    out = P.prepare(_cfg(src), tmp_path / "out")
    with pytest.raises(UnirecError, match="already exists"):
        P.prepare(_cfg(src), out)
    (out / "marker").write_text("x")
    P.prepare(_cfg(src), out, overwrite=True)
    assert not (out / "marker").exists() and (out / "manifest.json").is_file()


def test_dataset_open_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        PreparedDataset.open(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="manifest.json is missing"):
        PreparedDataset.open(tmp_path / "d")
    (tmp_path / "d" / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(DataError, match="format_version 99"):
        PreparedDataset.open(tmp_path / "d")


def test_dataset_configs_load():
    root = Path(__file__).resolve().parents[2] / "configs" / "datasets"
    paths = sorted(root.glob("*.yaml"))
    assert {p.name for p in paths} >= {"ml-100k.yaml", "ml-1m.yaml"}
    for p in paths:
        cfg = load_config(DatasetConfig, p)
        assert cfg.name and cfg.columns.user
    cfg = load_config(DatasetConfig, root / "ml-1m.yaml")
    kinds = {f.column: f.kind for f in cfg.item_features + cfg.user_features}
    assert kinds == {"title": "text", "genres": "multi", "year": "categorical", "gender": "categorical",
                     "age": "categorical", "occupation": "categorical"}


def test_sort_rows_packed_key_matches_multikey_sort():
    """The packed-key sort is Arrow's stable sort by (user, timestamp, order columns): rows tied
    on those keep their position (the source order), whatever their item id."""
    rng = np.random.default_rng(1)
    n = 2000
    base = {"user": pa.array(rng.integers(1, 20, n), pa.int32()), "item": pa.array(rng.integers(1, 9, n), pa.int32()),
            "rating": pa.array(rng.integers(1, 4, n).astype(np.float32))}
    shuffled = pa.array(rng.permutation(n).astype(np.int64))
    for ts in (rng.integers(-5, 5, n), rng.integers(-(2**62), 2**62, n)):   # packs / does not fit
        t = pa.table({**base, "timestamp": pa.array(ts, pa.int64())}).select(["user", "item", "timestamp", "rating"])
        for extra in ({}, {"tie": pa.array(rng.integers(0, 3, n))}, {"tie": pa.array(rng.random(n))},
                      {"row": shuffled}):
            tt = t
            for k, v in extra.items():
                tt = tt.append_column(k, v)
            want = tt.sort_by([(k, "ascending") for k in P.sort_keys(tt)])
            assert P.sort_rows(tt).equals(want.combine_chunks())
    t = pa.table({**base, "timestamp": pa.array(rng.integers(-(2**62), 2**62, n))})
    assert P._packed_key(t, ["user", "timestamp", "item"]) is None
    assert P._packed_key(t, ["user", "item"]) is not None


def test_sort_rows_orders_ties_by_the_row_column_not_by_position():
    """(user, timestamp) ties are ordered by the `row` order column (the Ray engine's source row),
    also when the keys do not fit one packed integer and the ties are sorted apart."""
    from unirec_dist.data.prepare import sort_rows

    t = pa.table({"user": pa.array([1, 1, 1, 1], pa.int32()),
                  "timestamp": pa.array([0, 2**40, 0, 0], pa.int64()),   # user + time + row: > 63 bits
                  "row": pa.array([2**30, 5, 2**25, 7], pa.int64())})
    assert sort_rows(t)["row"].to_pylist() == [7, 2**25, 2**30, 5]
