"""Distributed commands fail fast and clean up.

- an address that does not answer: one line within seconds, for every command that takes one;
- SIGTERM ends a command within 10 s, with no output and no temp dir left, also when the
  command is stuck inside a C call (a TCP port that accepts but is not Ray);
- `kill -9` of `prepare --engine ray` while its tasks write part files leaves no dataset, only
  a temp dir that the next run removes, and no process of its Ray cluster;
- `kill -9` of `pretrain` leaves no process of the Ray cluster it started (within 30 s), and a
  relative data.path works on the workers (resolved on the driver).
"""
from __future__ import annotations

import shutil
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest

from tests.reliability.conftest import DEBUG, leftovers, one_error, run_cli, start_cli
from tests.reliability.test_outputs import _big_log

DEAD = "127.0.0.1:1"   # nothing listens on port 1


def _address_args(kind: str, tmp_path: Path, raw: Path, dataset: Path, bundle: Path) -> list:
    return {
        "prepare": ["prepare", "--engine", "ray", "--ray-address", DEAD, "--config", raw, "--out", tmp_path / "out"],
        "pretrain": ["pretrain", "--config", DEBUG, "--address", DEAD, f"data.path={dataset}",
                     f"trainer.out_dir={tmp_path / 'out'}"],
        "serve": ["serve", "--bundle", bundle, "--ray-address", DEAD, "--port", "0"],
        "submit": ["submit", "--address", f"http://{DEAD}", "--", "pretrain", "--config", DEBUG,
                   f"data.path={dataset}", f"trainer.out_dir={tmp_path / 'out'}"],
        "jobs": ["jobs", "list", "--address", f"http://{DEAD}"],
        "prepare-malformed": ["prepare", "--engine", "ray", "--ray-address", "head:port", "--config", raw,
                              "--out", tmp_path / "out"],
    }[kind]


@pytest.mark.parametrize("kind", ["prepare", "pretrain", "serve", "submit", "jobs", "prepare-malformed"])
def test_address_that_does_not_answer_is_one_line(tmp_path, capsys, raw, dataset, bundle, kind):
    import ray

    rc, _, err = run_cli(capsys, *_address_args(kind, tmp_path, raw, dataset, bundle))
    line = one_error(rc, err)
    assert ("does not answer" in line) or ("expected" in line and "host:port" in line), line
    assert list(tmp_path.iterdir()) == []        # no output, no temp dir
    assert not ray.is_initialized()


def _ray_started(proc: psutil.Process) -> bool:
    try:
        return any("raylet" in " ".join(c.cmdline()) for c in proc.children(recursive=True))
    except psutil.Error:
        return False


def _tree(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _alive(procs: list[psutil.Process]) -> list[str]:
    """Those of `procs` still running (`is_running` also checks the start time: no pid reuse)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
        except psutil.Error:
            pass
    return out


def _gone_within(procs: list[psutil.Process], seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while _alive(procs) and time.monotonic() < deadline:
        time.sleep(0.5)
    return _alive(procs)


def _finish(proc) -> tuple[str, str]:
    out, err = proc.communicate(timeout=30)
    return out, err


@pytest.mark.slow
def test_sigterm_ends_prepare_on_ray_within_10s(tmp_path):
    cfg = _big_log(tmp_path / "big", 1_000_000)
    out = tmp_path / "out" / "prepared"
    proc = start_cli("prepare", "--engine", "ray", "--config", cfg, "--out", out)
    ps = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    while not _ray_started(ps) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)        # into the work
    assert proc.poll() is None, _finish(proc)[1][-2000:]
    cluster = _tree(proc.pid)
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    try:
        proc.wait(timeout=10)
    except Exception:
        proc.kill()
        pytest.fail("prepare --engine ray was still running 10 s after SIGTERM")
    assert time.monotonic() - t0 <= 10
    _, err = _finish(proc)
    assert proc.returncode != 0 and "Traceback" not in err, err[-2000:]
    assert not out.exists() and leftovers(out.parent) == []
    assert _gone_within(cluster, 30) == []


@pytest.mark.slow
def test_kill_9_of_prepare_on_ray_mid_write_leaves_no_dataset_and_no_process(tmp_path, capsys, raw):
    """A real `kill -9` of `prepare --engine ray` once its partitions write their part files into
    the temp dir: no dataset at --out, the Ray cluster ends within 30 s, and the next run into
    the same --out removes what the killed one left."""
    cfg = _big_log(tmp_path / "big", 200_000)
    out = tmp_path / "out" / "prepared"
    proc = start_cli("prepare", "--engine", "ray", "--config", cfg, "--out", out)
    tmp, cluster = None, []
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        found = list(out.parent.glob(".prepared.tmp-*")) if out.parent.is_dir() else []
        if found and (found[0] / "train").is_dir():     # made just before the partition tasks write
            tmp, cluster = found[0], _tree(proc.pid)
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    _finish(proc)
    if tmp is None:
        pytest.fail(f"prepare ended (rc {proc.returncode}) before it was seen writing part files")
    assert not out.exists() and tmp.is_dir()        # a temp dir, never a half-written dataset
    assert _gone_within(cluster, 30) == []
    rc, _, err = run_cli(capsys, "prepare", "--config", raw, "--out", out)
    assert rc == 0, err[-5:]
    assert (out / "manifest.json").is_file() and leftovers(out.parent) == []


@pytest.mark.slow
def test_sigterm_ends_a_command_stuck_in_a_c_call(tmp_path, raw):
    """A port that accepts TCP but is not Ray: the address check passes and ray.init waits inside
    its C++ client, where Python's own handler cannot run; the backstop ends it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        port = listener.getsockname()[1]
        out = tmp_path / "out"
        proc = start_cli("prepare", "--engine", "ray", "--ray-address", f"127.0.0.1:{port}", "--config", raw,
                         "--out", out)
        time.sleep(6)
        assert proc.poll() is None, _finish(proc)[1][-2000:]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except Exception:
            proc.kill()
            pytest.fail("still running 10 s after SIGTERM")
        _, err = _finish(proc)
        errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        # Ray's own handler (exit 15) when the wait is in Python at that moment; else our backstop
        assert proc.returncode in (signal.SIGTERM, 128 + signal.SIGTERM), err[-2000:]
        if proc.returncode == 128 + signal.SIGTERM:
            assert errors == ["error: stopped by signal 15 (the command did not end within 5 s)"]
        assert len(errors) <= 1 and "Traceback" not in err, err[-2000:]
        assert not out.exists() and leftovers(tmp_path) == []
    finally:
        listener.close()


@pytest.mark.slow
def test_kill_9_of_pretrain_leaves_no_ray_process_and_relative_data_path_works(tmp_path, dataset):
    """Run from a folder where `data.path=ds` is relative; once a checkpoint is reported (the
    workers read the data), kill -9 the CLI: every process below it ends within 30 s."""
    shutil.copytree(dataset, tmp_path / "ds")
    proc = start_cli("pretrain", "--config", DEBUG, "--workers", "1", "--no-progress", "data.path=ds",
                     "trainer.out_dir=run", "data.batch_size=16", "trainer.max_epochs=1000",
                     "distributed.checkpoint_every_n_steps=1", cwd=tmp_path)
    storage = tmp_path / "run" / "ray"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if any(storage.rglob("checkpoint_*")):
            break
        time.sleep(0.5)
    assert proc.poll() is None, _finish(proc)[1][-3000:]
    assert any(storage.rglob("checkpoint_*")), "no checkpoint reported within 240 s"
    cluster = _tree(proc.pid)
    assert any("raylet" in " ".join(p.cmdline()) for p in cluster)
    proc.kill()
    _finish(proc)
    assert _gone_within(cluster, 30) == []
