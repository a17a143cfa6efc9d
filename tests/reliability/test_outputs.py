"""Nothing a user owns is lost, and a machine's failure is one line.

- `prepare --out` that is, holds or lies inside an input: refused, with or without --overwrite;
- a read-only or full file system under any command's output: one `error:` line naming the
  path and the reason, exit 2, nothing half-written (real tmpfs mounts);
- temp dirs a killed run left are removed by the next run into the same place, and only ours
  (recognised by the marker inside, not by the name).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.reliability.conftest import DEBUG, FINETUNE, fill, leftovers, one_error, run_cli, snapshot, start_cli, tmpfs


# -- prepare --out over its inputs ------------------------------------------------------------
def _layout(tmp_path: Path, case: str) -> tuple[Path, Path, Path]:
    """(dataset yaml, --out, the folder holding every input) for one overlap case."""
    from tests.synthetic import write_synthetic_log

    home = tmp_path / "inputs"
    cfg_path = write_synthetic_log(home / "logs")
    cfg = yaml.safe_load(cfg_path.read_text())
    inter = Path(cfg["source"]["interactions"])
    items = Path(cfg["source"]["items"])
    if case == "interactions-folder-of-parts":
        parts = home / "logs" / "parts"
        parts.mkdir()
        import pyarrow.csv as pacsv

        pq.write_table(pacsv.read_csv(inter), parts / "part-0.parquet")
        cfg["source"]["interactions"] = str(parts)
        out = parts / "prepared"
    elif case == "items-in-own-folder":
        (home / "items").mkdir()
        items = items.rename(home / "items" / "items.parquet")
        cfg["source"]["items"] = str(items)
        out = home / "items"
    else:
        out = {"folder-holding-the-csv": inter.parent, "the-csv-itself": inter,
               "a-parent-of-the-inputs": home}[case]
    cfg_path = tmp_path / "ds.yaml"   # outside the inputs, so every case can hold all of them
    cfg_path.write_text(yaml.safe_dump(cfg))
    return cfg_path, out, home


@pytest.mark.parametrize("overwrite", [True, False], ids=["overwrite", "no-overwrite"])
@pytest.mark.parametrize("case", ["folder-holding-the-csv", "the-csv-itself", "a-parent-of-the-inputs",
                                  "items-in-own-folder", "interactions-folder-of-parts"])
def test_prepare_out_over_an_input_is_refused(tmp_path, capsys, case, overwrite):
    cfg, out, home = _layout(tmp_path, case)
    before = snapshot(home)
    rc, _, err = run_cli(capsys, "prepare", "--config", cfg, "--out", out, *(["--overwrite"] if overwrite else []))
    one_error(rc, err, "--out", "input")
    assert snapshot(home) == before                       # every input byte intact
    assert not (out / "manifest.json").exists()
    assert not leftovers(out.parent, home, *home.rglob("*"))


def test_prepare_out_beside_the_inputs_still_works(tmp_path, capsys):
    cfg, _, home = _layout(tmp_path, "folder-holding-the-csv")
    out = home / "logs-prepared"
    rc, _, _ = run_cli(capsys, "prepare", "--config", cfg, "--out", out)
    assert rc == 0 and (out / "manifest.json").is_file()


# -- operating-system failures ----------------------------------------------------------------
def _writer_args(kind: str, where: Path, raw: Path, dataset: Path, checkpoint: Path) -> list:
    return {
        "prepare": ["prepare", "--config", raw, "--out", where / "out"],
        "export": ["export", "--checkpoint", checkpoint, "--out", where / "out"],
        "evaluate": ["evaluate", "--baseline", "popularity", "--data", dataset, "--k", "10", "--out", where / "out"],
        "recommend": ["recommend", "--baseline", "popularity", "--data", dataset, "--all-users", "--out",
                      where / "out"],
        "train": ["train", "--config", DEBUG, f"data.path={dataset}", f"trainer.out_dir={where / 'out'}",
                  "trainer.max_epochs=1"],
        "finetune": ["finetune", "--from", checkpoint, "--config", FINETUNE, f"data.path={dataset}",
                     f"trainer.out_dir={where / 'out'}", "trainer.max_epochs=1"],
        "pretrain": ["pretrain", "--config", DEBUG, "--workers", "1", "--no-progress", f"data.path={dataset}",
                     f"trainer.out_dir={where / 'out'}"],
    }[kind]


@pytest.mark.parametrize("kind", ["prepare", "export", "evaluate", "recommend", "train", "finetune", "pretrain"])
def test_read_only_output_is_one_line(tmp_path, capsys, raw, dataset, checkpoint, kind):
    ds_before, ck_before = snapshot(dataset), snapshot(checkpoint)
    with tmpfs(tmp_path / "ro", read_only=True) as ro:
        rc, _, err = run_cli(capsys, *_writer_args(kind, ro, raw, dataset, checkpoint))
        one_error(rc, err, str(ro / "out"), "Read-only file system")
        assert list(ro.iterdir()) == []
    assert snapshot(dataset) == ds_before and snapshot(checkpoint) == ck_before


@pytest.mark.parametrize("kind", ["prepare", "export", "evaluate", "recommend", "train", "finetune"])
def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, capsys, raw, dataset, checkpoint, kind):
    with tmpfs(tmp_path / "full", full=True) as full:
        rc, _, err = run_cli(capsys, *_writer_args(kind, full, raw, dataset, checkpoint))
        one_error(rc, err, str(full / "out"), "No space left on device")
        assert [p.name for p in full.iterdir()] == ["fill"]    # no output, no temp dir


def test_full_disk_keeps_the_previous_output(tmp_path, capsys, dataset):
    """--overwrite onto a full disk: the old output stays whole (the new one never replaced it)."""
    with tmpfs(tmp_path / "m", size="4m") as m:
        args = ["recommend", "--baseline", "popularity", "--data", dataset, "--all-users", "--out", m / "r.parquet"]
        assert run_cli(capsys, *args)[0] == 0
        old = (m / "r.parquet").read_bytes()
        fill(m)
        rc, _, err = run_cli(capsys, *args, "--k", "20", "--overwrite")
        one_error(rc, err, "No space left on device")
        assert (m / "r.parquet").read_bytes() == old
        assert sorted(p.name for p in m.iterdir()) == ["fill", "r.parquet"]


# -- temp dirs left by a killed run -----------------------------------------------------------
def _plant(parent: Path, name: str, owner: dict | None) -> Path:
    """A temp dir as a killed run leaves it (with our marker naming `owner`), or a user's folder
    with the same kind of name (owner None: no marker)."""
    from unirec_dist.utils.atomic import MARKER

    d = parent / f".{name}.tmp-{'abandoned' if owner else 'users-own'}"
    d.mkdir(parents=True)
    (d / "half.parquet").write_bytes(b"x" * 1000)
    if owner is not None:
        (d / MARKER).write_text(json.dumps(owner))
    return d


def _dead_owner() -> dict:
    """The marker of a process of this host that has ended."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return {"host": socket.gethostname(), "pid": p.pid, "started": 1.0}


@pytest.mark.parametrize("kind", ["prepare", "export", "evaluate", "recommend"])
def test_next_run_removes_our_leftovers_and_only_ours(tmp_path, capsys, raw, dataset, checkpoint, kind):
    where = tmp_path / "w"
    ours = _plant(where, "out", _dead_owner())
    users = _plant(where, "out", None)                       # same name pattern, no marker
    alive = _plant(where / "x", "out", {"host": socket.gethostname(), "pid": os.getpid(),
                                        "started": __import__("psutil").Process().create_time()})
    shutil.move(str(alive), str(where / ".out.tmp-running"))  # a live run's temp dir
    other_host = _plant(where / "y", "out", {**_dead_owner(), "host": "another-machine"})
    shutil.move(str(other_host), str(where / ".out.tmp-nfs"))
    rc, _, err = run_cli(capsys, *_writer_args(kind, where, raw, dataset, checkpoint))
    assert rc == 0, err[-5:]
    assert (where / "out").exists()
    assert not ours.exists()
    assert users.is_dir() and (users / "half.parquet").is_file()
    assert (where / ".out.tmp-running").is_dir() and (where / ".out.tmp-nfs").is_dir()


def _big_log(d: Path, rows: int) -> Path:
    import numpy as np

    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"user_id": rng.integers(0, rows // 20, rows), "item_id": rng.integers(0, 50_000, rows),
                             "ts": np.arange(rows, dtype=np.int64)}), d / "log.parquet")
    cfg = {"name": "big", "source": {"interactions": str(d / "log.parquet")},
           "columns": {"user": "user_id", "item": "item_id", "timestamp": "ts"}}
    (d / "big.yaml").write_text(yaml.safe_dump(cfg))
    return d / "big.yaml"


@pytest.mark.slow
def test_kill_9_mid_write_then_next_run_leaves_no_temp_dir(tmp_path, capsys, raw):
    """A real `kill -9` of `prepare` while it writes its temp dir; the next run into the same
    --out (a small dataset, for speed) removes what the killed one left."""
    cfg = _big_log(tmp_path / "big", 3_000_000)
    out = tmp_path / "out" / "prepared"
    proc = start_cli("prepare", "--config", cfg, "--out", out)
    tmp = None
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        found = list(out.parent.glob(".prepared.tmp-*")) if out.parent.is_dir() else []
        if found and any(found[0].glob("*.parquet")):
            tmp = found[0]
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()
    if tmp is None:
        pytest.fail(f"prepare ended (rc {proc.returncode}) before it was seen writing; make the input larger")
    assert tmp.is_dir() and not out.exists()       # what a kill -9 leaves
    rc, _, err = run_cli(capsys, "prepare", "--config", raw, "--out", out)
    assert rc == 0, err[-5:]
    assert (out / "manifest.json").is_file()
    assert leftovers(out.parent) == []
