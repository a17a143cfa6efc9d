"""`--engine ray` (Ray Data on a local 2-CPU Ray) produces the Arrow engine's dataset content,
written as part files per user partition, without pulling the interactions to the driver."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.synthetic import write_synthetic_log
from unirec_dist.config.dataset import DatasetConfig
from unirec_dist.config.loader import load_config
from unirec_dist.data.dataset import PreparedDataset
from unirec_dist.data.prepare import prepare

pytest.importorskip("ray.data")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module (the engine reuses an initialized Ray and leaves it up)."""
    import ray

    from unirec_dist.data.ray_engine import _init_ray

    started = _init_ray(None)
    yield
    if started:
        ray.shutdown()


@pytest.fixture
def small_parts(monkeypatch):
    """Partitions of ~100 interactions, so that small logs still make several part files."""
    from unirec_dist.data import ray_engine

    monkeypatch.setattr(ray_engine, "ROWS_PER_PARTITION", 100)


def assert_same_content(a: PreparedDataset, b: PreparedDataset) -> None:
    """Same counts, vocabularies, splits and rows; b (Ray) has its row tables as part files,
    listed in the manifest with their row counts, valid/test parts each sorted by user."""
    assert a.manifest["counts"] == b.manifest["counts"]
    assert a.vocab_hash == b.vocab_hash and a.manifest["vocab_sizes"] == b.manifest["vocab_sizes"]
    assert a.manifest["split"] == b.manifest["split"] and a.manifest["features"] == b.manifest["features"]
    assert b.manifest["engine"] == "ray"
    for name in ("interactions", "train", "valid", "test"):
        ta, tb = a.table(name), b.table(name)
        assert ta.schema == tb.schema, name
        assert ta.equals(tb), name
        parts = b.manifest["parts"][name]
        assert sorted((b.root / name).iterdir()) == [b.root / p["file"] for p in parts]
        assert [pq.ParquetFile(b.root / p["file"]).metadata.num_rows for p in parts] == [p["rows"] for p in parts]
        assert sum(p["rows"] for p in parts) == tb.num_rows
        for p in parts:
            u = pq.read_table(b.root / p["file"], columns=["user"])["user"].to_numpy()
            assert (np.diff(u) >= 0).all(), p["file"]
    for rel in ("items.parquet", "vocab/user.parquet", "vocab/item.parquet", "item_counts.parquet"):
        assert pq.read_table(a.root / rel).equals(pq.read_table(b.root / rel)), rel


def test_ray_and_arrow_engines_identical(tmp_path, small_parts):
    # duplicates, null ids and every filter are exercised, so each step has work to do
    yml = write_synthetic_log(tmp_path / "raw", n_users=60, n_events=600,
                              filter={"min_rating": 2, "user_core": 3, "item_core": 3})
    log = tmp_path / "raw" / "interactions.csv"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines + lines[1:21] + ['1001,"i003",,4', ',"i001",1600000000,3']) + "\n")
    cfg = load_config(DatasetConfig, yml)
    a = PreparedDataset.open(prepare(cfg, tmp_path / "arrow"))
    b = PreparedDataset.open(prepare(cfg, tmp_path / "ray", engine="ray"))
    assert_same_content(a, b)
    ca = a.manifest["counts"]
    assert ca["dropped_duplicates"] == 20 and ca["dropped_null_ids"] == 1 and ca["dropped_null_timestamps"] == 1
    assert ca["dropped_rating_filter"] > 0 and ca["after_kcore"]["dropped"] > 0
    assert len(b.manifest["parts"]["train"]) > 2


def test_ray_kcore_of_several_rounds_and_temporal_split(tmp_path, small_parts):
    """A chain that the k-core (3, 3) peels one link per round: user k0 has 2 events (round 1),
    so item x0 keeps 2 raters (round 2), so user k1 keeps 2 events (round 3), ..."""
    rows = []
    t = 0

    def add(user: str, item: str) -> None:
        nonlocal t
        t += 1
        rows.append(f"{user},{item},{t}")

    for u in range(30):                      # a dense core: 30 users x 6 items, all kept
        for i in range(6):
            add(f"c{u}", f"core{i}")
    for k in range(4):                       # user k rates x{k-1}, x{k} (and core0); x{k} has one core rater
        for item in ([f"x{k - 1}"] if k else []) + [f"x{k}", "core0"]:
            add(f"k{k}", item)
        add(f"c{k}", f"x{k}")
    add("c10", "x3")                         # the end of the chain has raters enough
    add("c11", "x3")
    log = tmp_path / "log.csv"
    log.write_text("user,item,ts\n" + "\n".join(rows) + "\n")
    base = ["name=k", f"source.interactions={log}", "columns.user=user", "columns.item=item",
            "columns.timestamp=ts", "columns.rating=null", "filter.user_core=3", "filter.item_core=3"]
    for split in ([], ["split.protocol=temporal", "split.valid_fraction=0.1", "split.test_fraction=0.1"]):
        cfg = load_config(DatasetConfig, None, base + split)
        a = PreparedDataset.open(prepare(cfg, tmp_path / f"arrow{len(split)}"))
        b = PreparedDataset.open(prepare(cfg, tmp_path / f"ray{len(split)}", engine="ray"))
        assert_same_content(a, b)
        assert a.manifest["counts"]["after_kcore"]["iterations"] >= 6
    assert b.manifest["split"]["protocol"] == "temporal" and len(b.manifest["parts"]["valid"]) > 1
    assert b.table("valid").num_rows > 0


def test_ray_engine_bad_input_same_error(tmp_path):
    from unirec_dist.cli import main

    bad = tmp_path / "l.csv"
    bad.write_text("user,item,ts\na,x,1\nb,y,yesterday\n")
    yml = tmp_path / "c.yaml"
    yml.write_text(json.dumps({"name": "b", "source": {"interactions": str(bad)},
                               "columns": {"user": "user", "item": "item", "timestamp": "ts"}}))
    rc = main(["prepare", "--config", str(yml), "--out", str(tmp_path / "out"), "--engine", "ray"])
    assert rc == 2 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("split", [{}, {"tie_break": "random", "seed": 5}])
def test_ray_engine_breaks_ties_as_arrow_does(tmp_path, split, small_parts):
    """Tied timestamps: both engines order a user's tied events by source row (or the same seeded
    shuffle), whatever blocks and groups Ray makes."""
    yml = write_synthetic_log(tmp_path / "raw", n_users=40, n_events=400)
    log = tmp_path / "raw" / "interactions.csv"
    lines = log.read_text().splitlines()
    # hour granularity: most of a user's events now share a timestamp with others
    head = lines[0].split(",")
    k = head.index('"ts"') if '"ts"' in head else head.index("ts")
    rows = [r.split(",") for r in lines[1:]]
    for r in rows:
        r[k] = str(int(r[k]) // 3600 * 3600)
    log.write_text("\n".join([lines[0]] + [",".join(r) for r in rows]) + "\n")
    cfg = load_config(DatasetConfig, yml, [f"split.{k}={v}" for k, v in split.items()])
    a = PreparedDataset.open(prepare(cfg, tmp_path / "arrow"))
    b = PreparedDataset.open(prepare(cfg, tmp_path / "ray", engine="ray"))
    assert a.manifest["split"]["ordering"]["events_in_tied_groups"] > 0.5
    assert_same_content(a, b)


def test_ray_engine_reads_headerless_csv(tmp_path):
    (tmp_path / "log.csv").write_text("".join(f"u{u},i{(u * 7 + k) % 9},{k}\n" for u in range(5) for k in range(4)))
    cfg = load_config(DatasetConfig, None, ["name=h", f"source.interactions={tmp_path / 'log.csv'}",
                                           "source.header=false", "source.column_names=[user_id,item_id,timestamp]"])
    a = PreparedDataset.open(prepare(cfg, tmp_path / "arrow"))
    b = PreparedDataset.open(prepare(cfg, tmp_path / "ray", engine="ray"))
    assert a.manifest["counts"]["raw"] == b.manifest["counts"]["raw"] == 20
    assert a.table("test").equals(b.table("test"))


def test_ray_engine_pulls_only_partition_sized_data_to_the_driver(tmp_path, small_parts, monkeypatch):
    """Every object the driver gets from Ray (ray.get, which Ray Data's own driver-side reads
    use too) holds at most about one entry per partition or block: never the interactions, nor
    the user/item vocabularies, counts or masks (they stay in the object store)."""
    import ray

    yml = write_synthetic_log(tmp_path / "raw", n_users=400, n_items=300, n_events=3000)
    pulled: list[int] = []
    real_get = ray.get

    def size(x) -> int:
        if isinstance(x, (pa.Table, pa.RecordBatch)):
            return x.num_rows
        if isinstance(x, (np.ndarray, pa.Array, pa.ChunkedArray)):
            return len(x)
        if isinstance(x, (list, tuple)):
            return max([len(x)] + [size(v) for v in x])
        if isinstance(x, dict):
            return max([len(x)] + [size(v) for v in x.values()])
        return 0

    def get(refs, *a, **kw):
        out = real_get(refs, *a, **kw)
        pulled.append(size(out))
        return out

    monkeypatch.setattr(ray, "get", get)
    b = PreparedDataset.open(prepare(load_config(DatasetConfig, yml), tmp_path / "ray", engine="ray"))
    monkeypatch.undo()
    c = b.manifest["counts"]
    assert c["final"] == 3000 and c["users"] > 200 and c["items"] > 200 and pulled
    n_parts = len(b.manifest["parts"]["interactions"])
    assert n_parts == 30
    assert max(pulled) <= n_parts, max(pulled)   # 30 partitions, not ~300 users or items, nor 3000 rows


def test_ray_engine_numbers_rows_in_file_order_whatever_the_read_packing(tmp_path, small_parts, monkeypatch):
    """A folder of many small Parquet files (several row groups each) whose users' events tie on
    the timestamp across files: the Ray engine gives the tied rows their source position (file in
    name order, row group, row), as the Arrow engine does, even when Ray's Parquet reader packs the
    row groups of several files into one read task out of file order (small read bins force that
    here; at 100 files of a 100M log Ray's default 128 MiB bins did it)."""
    monkeypatch.setenv("RAY_DATA_PARQUET_BIN_PACKING_BYTES", "2000")
    src = tmp_path / "log"
    src.mkdir()
    for f in range(60):
        r = np.arange(40)
        # 8 users; each user's events in 15 consecutive files share one timestamp
        pq.write_table(pa.table({"user": pa.array(r % 8), "item": pa.array([f"i{(f * 7 + x) % 97}" for x in r]),
                                 "ts": pa.array(1000 + r * 0 + f // 15)}), src / f"part-{f:03d}.parquet",
                       row_group_size=10)
    cfg = load_config(DatasetConfig, None, ["name=t", f"source.interactions={src}", "columns.user=user",
                                           "columns.item=item", "columns.timestamp=ts"])
    a = PreparedDataset.open(prepare(cfg, tmp_path / "arrow"))
    b = PreparedDataset.open(prepare(cfg, tmp_path / "ray", engine="ray"))
    assert a.manifest["split"]["ordering"]["events_in_tied_groups"] > 0.9
    assert_same_content(a, b)


@pytest.mark.parametrize("layout", ["jsonl", "hive"])
def test_ray_engine_reads_json_lines_and_partitioned_parquet_as_arrow_does(tmp_path, layout):
    """The Ray engine's own file reader (one task per file) gives the Arrow engine's rows for the
    other layouts it reads: a JSON-lines file, and a Parquet folder partitioned by directory name
    (`user=u3/...`: the user column comes from the path, as pq.read_table gives it)."""
    rng = np.random.default_rng(0)
    rows = [{"user": f"u{u}", "item": f"i{int(rng.integers(30))}", "ts": int(t) // 4}
            for u in range(12) for t in rng.integers(0, 40, 8)]
    if layout == "jsonl":
        src = tmp_path / "log.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        src = tmp_path / "log"
        for u in range(12):
            (src / f"user=u{u}").mkdir(parents=True)
            mine = [r for r in rows if r["user"] == f"u{u}"]
            pq.write_table(pa.table({"item": [r["item"] for r in mine], "ts": [r["ts"] for r in mine]}),
                           src / f"user=u{u}" / "part-0.parquet", row_group_size=3)
    cfg = load_config(DatasetConfig, None, ["name=j", f"source.interactions={src}", "columns.user=user",
                                           "columns.item=item", "columns.timestamp=ts"])
    a = PreparedDataset.open(prepare(cfg, tmp_path / "arrow"))
    b = PreparedDataset.open(prepare(cfg, tmp_path / "ray", engine="ray"))
    assert a.manifest["counts"]["final"] > 80
    assert_same_content(a, b)


def test_ray_engine_names_an_unreadable_part_file_in_one_line(tmp_path, capsys):
    """A part file that is not Parquet, found by the read task that opens it: one `error:` line
    naming that file (not Ray's traceback or retry advice), exit 2, nothing written."""
    from unirec_dist.cli import main

    src = tmp_path / "log"
    src.mkdir()
    pq.write_table(pa.table({"user": [1, 2], "item": [3, 4], "ts": [5, 6]}), src / "part-0.parquet")
    (src / "part-1.parquet").write_bytes(b"PAR1" + b"not parquet" * 4 + b"PAR1")
    yml = tmp_path / "c.yaml"
    yml.write_text(json.dumps({"name": "b", "source": {"interactions": str(src)},
                               "columns": {"user": "user", "item": "item", "timestamp": "ts"}}))
    rc = main(["prepare", "--config", str(yml), "--out", str(tmp_path / "out"), "--engine", "ray"])
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert rc == 2 and not (tmp_path / "out").exists()
    assert len(err) == 1 and err[0].startswith(f"error: {src / 'part-1.parquet'}: cannot read as parquet: "), err
    assert "attempts" not in err[0] and "Traceback" not in err[0]
