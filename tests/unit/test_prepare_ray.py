"""`--engine ray` (Ray Data on a local 2-CPU Ray) produces exactly the Arrow engine's output."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from unirec_dist.config.dataset import DatasetConfig
from unirec_dist.config.loader import load_config
from unirec_dist.data.dataset import PreparedDataset
from unirec_dist.data.prepare import prepare
from tests.synthetic import write_synthetic_log

pytest.importorskip("ray.data")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module (the engine reuses an initialized Ray and leaves it up)."""
    from unirec_dist.data.ray_engine import _init_ray
    import ray

    started = _init_ray(None)
    yield
    if started:
        ray.shutdown()


def test_ray_and_arrow_engines_identical(tmp_path):
    # duplicates, null ids and every filter are exercised, so each step has work to do
    yml = write_synthetic_log(tmp_path / "raw", n_users=60, n_events=600,
                              filter={"min_rating": 2, "user_core": 3, "item_core": 3})
    log = tmp_path / "raw" / "interactions.csv"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines + lines[1:21] + ['1001,"i003",,4', ',"i001",1600000000,3']) + "\n")
    cfg = load_config(DatasetConfig, yml)
    a = PreparedDataset.open(prepare(cfg, tmp_path / "arrow"))
    b = PreparedDataset.open(prepare(cfg, tmp_path / "ray", engine="ray"))
    ca, cb = a.manifest["counts"], b.manifest["counts"]
    assert ca == cb
    assert ca["dropped_duplicates"] == 20 and ca["dropped_null_ids"] == 1 and ca["dropped_null_timestamps"] == 1
    assert ca["dropped_rating_filter"] > 0 and ca["after_kcore"]["dropped"] > 0
    files = sorted(p.relative_to(a.root).as_posix() for p in a.root.rglob("*.parquet"))
    assert files == sorted(p.relative_to(b.root).as_posix() for p in b.root.rglob("*.parquet"))
    for rel in files:
        assert pq.read_table(a.root / rel).equals(pq.read_table(b.root / rel)), rel
    assert a.vocab_hash == b.vocab_hash
    assert a.manifest["split"] == b.manifest["split"] and a.manifest["features"] == b.manifest["features"]
    assert b.manifest["engine"] == "ray"


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
def test_ray_engine_breaks_ties_as_arrow_does(tmp_path, split):
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
    for name in ("interactions", "train", "valid", "test"):
        assert a.table(name).equals(b.table(name)), name
    assert a.manifest["split"] == b.manifest["split"]


def test_ray_engine_reads_headerless_csv(tmp_path):
    (tmp_path / "log.csv").write_text("".join(f"u{u},i{(u * 7 + k) % 9},{k}\n" for u in range(5) for k in range(4)))
    cfg = load_config(DatasetConfig, None, ["name=h", f"source.interactions={tmp_path / 'log.csv'}",
                                           "source.header=false", "source.column_names=[user_id,item_id,timestamp]"])
    a = PreparedDataset.open(prepare(cfg, tmp_path / "arrow"))
    b = PreparedDataset.open(prepare(cfg, tmp_path / "ray", engine="ray"))
    assert a.manifest["counts"]["raw"] == b.manifest["counts"]["raw"] == 20
    assert a.table("test").equals(b.table("test"))
