"""prepare on logs as people have them: tied timestamps, no timestamps, headerless files, repeat
consumption, raw item columns kept for fine-tuning (issue 12)."""
from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from unirec_dist.cli import main
from unirec_dist.config.dataset import DatasetConfig
from unirec_dist.config.loader import from_dict
from unirec_dist.data import prepare as P
from unirec_dist.data.dataset import PreparedDataset
from unirec_dist.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _fresh_log_handlers():
    # the CLI binds its log handler to the stderr of the test that called it; drop stale ones
    logging.getLogger().handlers.clear()
    yield

# Every user's events share one timestamp per basket; rows are in the order the user gave them,
# item ids deliberately out of order (the largest id is never the last row).
TIED_CSV = """user,item,ts,pos
u1,i5,100,1
u1,i3,100,2
u1,i9,200,1
u1,i1,200,2
u2,i8,50,1
u2,i2,50,2
u2,i7,50,3
u2,i4,50,4
u3,i6,10,2
u3,i9,10,1
u3,i2,20,1
"""


def _cfg(path: Path, **extra) -> DatasetConfig:
    data = {"name": "t", "source": {"interactions": str(path)},
            "columns": {"user": "user", "item": "item", "timestamp": "ts"}}
    for k, v in extra.items():
        data[k] = {**data.get(k, {}), **v}
    return from_dict(DatasetConfig, data, where="test.yaml")


def _prep(tmp_path: Path, text: str, engine: str = "arrow", name: str = "log.csv", **extra) -> PreparedDataset:
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / name
    src.write_text(text)
    return PreparedDataset.open(P.prepare(_cfg(src, **extra), tmp_path / f"out-{engine}", engine=engine))


def _targets(ds: PreparedDataset, split: str) -> dict[str, str]:
    raw_user = ds.vocab("user").sort_by("index")["raw"].to_pylist()
    raw_item = ds.vocab("item").sort_by("index")["raw"].to_pylist()
    t = ds.table(split)
    return {raw_user[u - 1]: raw_item[tg[0] - 1] for u, tg in zip(t["user"].to_pylist(), t["targets"].to_pylist())}


def _history(ds: PreparedDataset, user: str) -> list[str]:
    raw_user = ds.vocab("user").sort_by("index")["raw"].to_pylist()
    raw_item = ds.vocab("item").sort_by("index")["raw"].to_pylist()
    t = ds.table("train")
    row = t["user"].to_pylist().index(raw_user.index(user) + 1)
    return [raw_item[i - 1] for i in t["items"][row].as_py()]


def test_ties_follow_source_row_order_not_item_id(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="unirec_dist.data.prepare"):
        ds = _prep(tmp_path, TIED_CSV)
    # the last row of each user's last timestamp is the test target, the row before it valid
    assert _targets(ds, "test") == {"u1": "i1", "u2": "i4", "u3": "i2"}
    assert _targets(ds, "valid") == {"u1": "i9", "u2": "i7", "u3": "i9"}
    assert _history(ds, "u2") == ["i8", "i2"]
    o = ds.manifest["split"]["ordering"]
    assert o["events_in_tied_groups"] == round(10 / 11, 4) and o["largest_group"] == 4
    assert o["targets_tied"] == {"valid": 1.0, "test": round(2 / 3, 4)}
    warn = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warn) == 1 and "67% of test targets" in warn[0] and "columns.tie_break" in warn[0]


def test_tie_break_column_then_row(tmp_path):
    ds = _prep(tmp_path, TIED_CSV, columns={"tie_break": "pos"})
    # u3: pos orders i9 (1) before i6 (2) at ts 10
    assert _history(ds, "u3") == ["i9"] and _targets(ds, "valid")["u3"] == "i6"
    assert _targets(ds, "test") == {"u1": "i1", "u2": "i4", "u3": "i2"}


def test_random_tie_break_is_seeded(tmp_path):
    a = _prep(tmp_path / "a", TIED_CSV, split={"tie_break": "random", "seed": 3})
    b = _prep(tmp_path / "b", TIED_CSV, split={"tie_break": "random", "seed": 3})
    assert a.table("interactions").equals(b.table("interactions"))
    orders = {tuple(_prep(tmp_path / f"s{s}", TIED_CSV, split={"tie_break": "random", "seed": s})
                    .table("interactions")["item"].to_pylist()) for s in range(6)}
    assert len(orders) > 1


def test_duplicates_inside_a_tied_group_keep_the_first_row(tmp_path):
    ds = _prep(tmp_path, "user,item,ts\nu,a,1\nu,b,1\nu,a,1\nu,c,2\nu,d,3\n")
    assert ds.manifest["counts"]["dropped_duplicates"] == 1
    assert _history(ds, "u") == ["a", "b"]


CONST_CSV = "user,item,ts\nu1,i3,0\nu1,i1,0\nu1,i2,0\nu2,i2,0\nu2,i3,0\nu2,i1,0\n"


def test_constant_timestamps_refused_without_split_order_row(tmp_path, capsys):
    (tmp_path / "log.csv").write_text(CONST_CSV)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: c\nsource: {{interactions: {tmp_path / 'log.csv'}}}\n"
                   "columns: {user: user, item: item, timestamp: ts}\n")
    assert main(["prepare", "--config", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "same value (0) in every row" in err[0] and "split.order: row" in err[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="empty in every row"):
        _prep(tmp_path, "user,item,ts\nu,a,\nu,b,\nu,c,\n", name="empty.csv")


def test_split_order_row_uses_file_order_without_a_timestamp_column(tmp_path):
    text = "\n".join(line.rsplit(",", 1)[0] for line in CONST_CSV.splitlines()) + "\n"   # no ts column
    ds = _prep(tmp_path, text, split={"order": "row"})
    assert _targets(ds, "test") == {"u1": "i2", "u2": "i1"}
    assert _targets(ds, "valid") == {"u1": "i1", "u2": "i3"}
    assert ds.manifest["split"]["ordering"] == {"order": "row", "tie_break": "row"}
    # repeat purchases of the same item are events, not duplicates, when time is the row order
    ds = _prep(tmp_path / "r", "user,item\nu,a\nu,b\nu,a\nu,a\n", split={"order": "row"})
    assert ds.manifest["counts"]["dropped_duplicates"] == 0 and _targets(ds, "test") == {"u": "a"}
    with pytest.raises(ConfigError, match="contradicts"):
        _cfg(tmp_path / "x.csv", split={"order": "row", "tie_break": "random"})


def test_repeat_rate_of_targets(tmp_path):
    # u1's valid target (a) and test target (b) were consumed before; u2's test target (c) too,
    # its valid target (d) not; u3 never repeats
    text = ("user,item,ts\nu1,a,1\nu1,b,2\nu1,a,3\nu1,b,4\n"
            "u2,c,1\nu2,d,2\nu2,c,3\n"
            "u3,a,1\nu3,b,2\nu3,c,3\n")
    ds = _prep(tmp_path, text)
    assert ds.manifest["split"]["repeat_rate"] == {"valid": round(1 / 3, 4), "test": round(2 / 3, 4)}
    ds = _prep(tmp_path / "t", text.replace("u3,c,3", "u3,c,3\nu3,a,4"),
               split={"protocol": "temporal", "valid_fraction": 0.2, "test_fraction": 0.2})
    rr = ds.manifest["split"]["repeat_rate"]
    assert set(rr) == {"valid", "test"} and 0 < rr["test"] <= 1


def test_headerless_csv_with_column_names(tmp_path, caplog):
    body = "u1,i1,1\nu1,i2,2\nu1,i3,3\n2,5,4\n"
    with caplog.at_level(logging.WARNING):
        ds = _prep(tmp_path, body, source={"header": False, "column_names": ["user", "item", "ts"]})
    assert ds.manifest["counts"]["raw"] == 4 and ds.n_users == 2
    assert not [r for r in caplog.records if "looks like data" in r.getMessage()]


def test_numeric_header_row_warns(tmp_path, caplog):
    (tmp_path / "log.csv").write_text("1,10,100\n1,11,101\n1,12,102\n")
    with caplog.at_level(logging.WARNING, logger="unirec_dist.data.sources"):
        with pytest.raises(DataError, match="column 'user'.*not found"):
            P.prepare(_cfg(tmp_path / "log.csv"), tmp_path / "out")
    warn = [r.getMessage() for r in caplog.records if "looks like data" in r.getMessage()]
    assert len(warn) == 1 and "source.header: false" in warn[0] and "1,10,100" in warn[0]


def test_header_options_validated(tmp_path):
    with pytest.raises(ConfigError, match="source.column_names: required"):
        _cfg(tmp_path / "x.csv", source={"header": False})
    with pytest.raises(ConfigError, match="only with source.header: false"):
        _cfg(tmp_path / "x.csv", source={"column_names": ["a"]})


def test_raw_item_columns_are_kept(tmp_path):
    (tmp_path / "items.csv").write_text('item,title,year,genres\ni1,"Matrix, The",1999,Action|Sci-Fi\n'
                                        "i2,Heat,1995,Crime\ni9,Unused,2000,Drama\n")
    ds = _prep(tmp_path, "user,item,ts\nu,i1,1\nu,i2,2\nu,i3,3\n",
               source={"items": str(tmp_path / "items.csv")})
    raw = pq.read_table(ds.root / "items_raw.parquet")
    assert raw.column_names == ["item", "title", "year", "genres"]
    assert raw["title"].to_pylist() == ["Matrix, The", "Heat", None]       # i3 has no row
    assert raw["year"].to_pylist() == [1999, 1995, None]


def test_repeat_heavy_log_sets_validation_masking_and_evaluate_states_it(tmp_path, capsys):
    from unirec_dist.config.train import TrainerSection, resolve_val_mask_seen

    rows = ["user,item,ts"] + [f"u{u},i{(u + t) % 3},{t}" for u in range(6) for t in range(7)]   # cycles over 3 items
    ds = _prep(tmp_path, "\n".join(rows) + "\n")
    assert ds.manifest["split"]["repeat_rate"] == {"valid": 1.0, "test": 1.0}
    mask, why = resolve_val_mask_seen(TrainerSection(), ds.manifest)
    assert mask is False and "100.0% of validation targets" in why
    assert resolve_val_mask_seen(TrainerSection(val_mask_seen=True), ds.manifest)[0] is True
    rare = {"split": {"repeat_rate": {"valid": 0.01, "test": 0.0}}}
    assert resolve_val_mask_seen(TrainerSection(), rare)[0] is True
    assert resolve_val_mask_seen(TrainerSection(val_mask_seen=False), rare)[0] is False
    assert main(["evaluate", "--baseline", "popularity", "--data", str(ds.root), "--k", "2"]) == 0
    assert "seen items NOT masked (100.0% of test targets were seen before)" in capsys.readouterr().out
