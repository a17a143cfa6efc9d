"""A user's mistake, in any command, is one `error:` line (exit 2) and writes nothing; and the
job entry point says in one line what a cluster's Python lacks."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.reliability.conftest import DEBUG, FINETUNE, REPO, leftovers, one_error, run_cli


def test_one_column_in_two_roles_is_refused(tmp_path, capsys, raw):
    rc, _, err = run_cli(capsys, "prepare", "--config", raw, "--out", tmp_path / "out", "columns.user=item_id")
    one_error(rc, err, "columns:", "user and item", "'item_id'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("overrides, says", [
    (["split.test_fraction=0"], "split: test_fraction: must be in (0, 1), got 0"),
    (["split.valid_fraction=1"], "split: valid_fraction: must be in [0, 1), got 1"),
    (["split.valid_fraction=0.6", "split.test_fraction=0.5"], "split: valid_fraction + test_fraction: must be below 1"),
])
def test_split_fractions_name_the_key_once(tmp_path, capsys, raw, overrides, says):
    rc, _, err = run_cli(capsys, "prepare", "--config", raw, "--out", tmp_path / "out", "split.protocol=temporal",
                         *overrides)
    line = one_error(rc, err, says)
    assert "split: split:" not in line
    assert list(tmp_path.iterdir()) == []


def _missing_input_args(kind: str, tmp: Path, dataset: Path, checkpoint: Path, bundle: Path) -> list:
    nope = tmp / "nope"
    return {
        "prepare": ["prepare", "--config", _table_yaml(tmp, nope / "log.csv"), "--out", tmp / "out"],
        "train": ["train", "--config", DEBUG, f"data.path={nope}", f"trainer.out_dir={tmp / 'out'}"],
        "finetune": ["finetune", "--from", nope, "--config", FINETUNE, f"data.path={dataset}",
                     f"trainer.out_dir={tmp / 'out'}"],
        "pretrain": ["pretrain", "--config", DEBUG, "--workers", "1", f"data.path={nope}",
                     f"trainer.out_dir={tmp / 'out'}"],
        "evaluate": ["evaluate", "--checkpoint", nope, "--out", tmp / "out"],
        "recommend": ["recommend", "--checkpoint", nope, "--all-users", "--out", tmp / "out"],
        "export": ["export", "--checkpoint", nope, "--out", tmp / "out"],
        "serve": ["serve", "--bundle", nope, "--port", "0"],
        "explain": ["explain", "--bundle", nope, "--user", "1"],
        "submit": ["submit", "--", "nonsense", "--config", DEBUG],
    }[kind]


def _table_yaml(tmp: Path, interactions: Path) -> Path:
    p = tmp / "ds.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "source": {"interactions": str(interactions)}}))
    return p


@pytest.mark.parametrize("kind", ["prepare", "train", "finetune", "pretrain", "evaluate", "recommend", "export",
                                  "serve", "explain", "submit"])
def test_missing_input_is_one_line_and_writes_nothing(tmp_path, capsys, dataset, checkpoint, bundle, kind):
    args = _missing_input_args(kind, tmp_path, dataset, checkpoint, bundle)
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, _, err = run_cli(capsys, *args)
    one_error(rc, err, "nope" if kind != "submit" else "nonsense")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert leftovers(tmp_path) == []


def test_job_entry_point_without_the_stack_is_one_line():
    """`python -S` (no site-packages): what a Ray head started outside the project's environment runs."""
    r = subprocess.run([sys.executable, "-S", "-m", "launch.pretrain_job", "--config", DEBUG], cwd=REPO,
                       capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for what in ("lacks", "torch", "torchrec", "lightning", "cluster/README.md"):
        assert what in lines[0]
    assert "Traceback" not in r.stderr


def test_evaluate_on_a_dataset_without_the_split_is_one_line(dataset, tmp_path, capsys):
    """Either layout may hold a split (test.parquet or test/ parts); neither is one line naming both."""
    import shutil

    from tests.reliability.conftest import one_error, run_cli

    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    (ds / "test.parquet").unlink()
    rc, _, err = run_cli(capsys, "evaluate", "--baseline", "popularity", "--data", ds, "--split", "test")
    one_error(rc, err, "has no test split", "test.parquet", "test/ folder of parts")
