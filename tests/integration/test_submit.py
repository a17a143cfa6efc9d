"""`unirec submit` / `unirec jobs` end to end against a local Ray head that this module starts
(`ray start --head --block` with its own ports and temp dir) and stops.

The head is stopped by ending the `ray start --block` process group this test started, not with
`ray stop`: `ray stop` ends every Ray process on the machine, other users' clusters included.
Token auth is left at Ray's default: the head turns it on when ~/.ray/auth_token exists (it
usually does once any local `ray.init()` ran), and the CLI must cope either way.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from unirec_dist.cli import main

CONFIG = "configs/pretrain/debug.yaml"
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    from tests.distributed.toy import free_port

    return free_port()


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the `ray start --block` we started: SIGTERM to it drains and shuts its node down
    (raylet, GCS, dashboard, workers; a few seconds); then SIGKILL whatever is left in its
    process group."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    proc.terminate()
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def ray_head():
    # short temp dir: Ray's unix socket paths must stay under ~107 characters
    temp = Path(tempfile.mkdtemp(prefix="ur-", dir="/tmp"))
    dash = _free_port()
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")    # the job runs `python`: this venv's
    env.pop("RAY_ADDRESS", None)
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"   # on SIGTERM: stop now, no 30 s drain
    cmd = [str(Path(bindir) / "ray"), "start", "--head", "--block", "--num-cpus", "2",
           "--port", str(_free_port()), "--dashboard-port", str(dash), "--dashboard-host", "127.0.0.1",
           "--include-dashboard", "true", "--ray-client-server-port", str(_free_port()),
           "--dashboard-agent-listen-port", str(_free_port()), "--temp-dir", str(temp),
           "--disable-usage-stats"]
    log = open(temp / "ray-start.log", "wb")
    proc = subprocess.Popen(cmd, cwd=temp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 60
        while True:   # the Jobs API answers once the dashboard has loaded its job module
            if proc.poll() is not None:
                pytest.fail(f"ray start exited {proc.returncode}: {(temp / 'ray-start.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{address}/api/authentication_mode", timeout=2) as r:
                    if r.status == 200:
                        from launch.submit import connect

                        connect(address).list_jobs()
                        break
            except Exception:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the dashboard at {address} did not come up: {(temp / 'ray-start.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield address
    finally:
        _stop_group(proc)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tests.synthetic import prepared_dataset

    return prepared_dataset(tmp_path_factory.mktemp("ds"), n_users=40)


def test_submit_pretrain_succeeds_and_jobs_commands(ray_head, dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    rc = main(["submit", "--address", ray_head, "--", "pretrain", "--config", CONFIG, "--workers", "1",
               "--no-progress", f"data.path={dataset}", f"trainer.out_dir={out}", "data.batch_size=16",
               "trainer.max_epochs=1", "trainer.max_steps=2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.out[-3000:] + captured.err[-2000:]
    lines = captured.out.splitlines()
    job_id = lines[0].removeprefix("job: ")
    assert lines[0].startswith("job: raysubmit_")
    assert lines[-1] == f"job {job_id}: SUCCEEDED"
    final = out / "checkpoints" / "final"
    assert f"checkpoint: {final}" in captured.out      # the driver's own output, streamed back
    m = json.loads((final / "manifest.json").read_text())
    assert m["kind"] == "pretrain" and m["world_size"] == 1 and m["step"] == 2

    assert main(["jobs", "status", job_id, "--address", ray_head]) == 0
    assert capsys.readouterr().out.startswith(f"{job_id}: SUCCEEDED")
    assert main(["jobs", "list", "--address", ray_head]) == 0
    listing = capsys.readouterr().out
    assert job_id in listing and "launch.pretrain_job" in listing
    assert main(["jobs", "logs", job_id, "--address", ray_head]) == 0
    assert f"checkpoint: {final}" in capsys.readouterr().out


def test_stop_a_running_job(ray_head, capsys):
    from launch.submit import connect, wait

    client = connect(ray_head)
    job_id = client.submit_job(entrypoint="python -c 'import time; print(\"started\", flush=True); time.sleep(600)'")
    assert wait_running(client, job_id)
    assert main(["jobs", "stop", job_id, "--wait", "--address", ray_head]) == 0
    assert capsys.readouterr().out.strip() == f"{job_id}: STOPPED"
    assert wait(client, job_id, timeout_s=30) == "STOPPED"
    # stopping it again says so instead of failing
    assert main(["jobs", "stop", job_id, "--address", ray_head]) == 0
    assert "not running (STOPPED)" in capsys.readouterr().out


def wait_running(client, job_id: str, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if str(client.get_job_status(job_id)) in ("RUNNING", "JobStatus.RUNNING"):
            return True
        time.sleep(0.3)
    return False


def test_failed_job_exits_1_and_user_mistake_in_job_is_one_line(ray_head, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    rc = main(["submit", "--address", ray_head, "--", "pretrain", "--config", CONFIG,
               f"data.path={tmp_path / 'missing'}", f"trainer.out_dir={tmp_path / 'run'}"])
    out = capsys.readouterr().out
    assert rc == 1 and out.splitlines()[-1].endswith(": FAILED"), out[-3000:]
    errors = [ln for ln in out.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "missing" in errors[0], out[-3000:]


@pytest.mark.parametrize("argv", [
    ["jobs", "status", "raysubmit_doesnotexist"],
    ["jobs", "logs", "raysubmit_doesnotexist"],
    ["jobs", "stop", "raysubmit_doesnotexist"],
])
def test_unknown_job_id_is_one_line(ray_head, capsys, argv):
    assert main([*argv, "--address", ray_head]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: unknown job id 'raysubmit_doesnotexist' on {ray_head}"


def test_token_auth_is_sent_only_when_the_cluster_asks(ray_head, monkeypatch, capsys):
    """Ray 2.60's `ray start --head` turns token auth on when ~/.ray/auth_token exists (or
    RAY_AUTH_MODE=token). The CLI reads the mode from the dashboard's public endpoint."""
    import urllib.request

    from launch.submit import probe

    with urllib.request.urlopen(f"{ray_head}/api/authentication_mode", timeout=5) as r:
        mode = json.loads(r.read())["authentication_mode"]
    headers = probe(ray_head)
    if mode != "token":
        assert headers == {}
        pytest.skip("this head runs without token auth (no ~/.ray/auth_token when it started)")
    assert headers["Authorization"].startswith("Bearer ")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    assert main(["jobs", "list", "--address", ray_head]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: the Ray cluster at {ray_head} rejected the auth token"), err


@pytest.mark.parametrize("argv", [
    ["submit", "--", "pretrain", "--config", CONFIG],
    ["jobs", "list"],
])
def test_unreachable_address_fails_fast_in_one_line(capsys, argv):
    address = f"http://127.0.0.1:{_free_port()}"
    argv = argv[:1] + ["--address", address] + argv[1:] if argv[0] == "submit" else argv + ["--address", address]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: Ray dashboard at {address} does not answer"), err


def test_address_from_ray_address_env(monkeypatch, capsys):
    address = f"127.0.0.1:{_free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert main(["jobs", "list"]) == 2
    assert f"error: Ray dashboard at http://{address} does not answer" in capsys.readouterr().err


@pytest.mark.parametrize("inner, message", [
    ([], "nothing to submit"),
    (["nope"], "'nope' is not a unirec command"),
    (["jobs", "list"], "'jobs' is not a unirec command that can run as a job"),
    (["pretrain"], "pretrain: the following arguments are required: --config"),
])
def test_inner_command_is_validated_before_connecting(capsys, inner, message):
    # the address does not answer: the command must fail on its arguments first
    assert main(["submit", "--address", f"http://127.0.0.1:{_free_port()}", "--", *inner]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_job_python_without_the_stack_is_one_line(ray_head, tmp_path, capsys, monkeypatch):
    """A cluster whose `python` lacks the stack (here: this interpreter without site-packages,
    first on the job's PATH): the job ends with one line saying what is missing and where the
    stack belongs, and `submit` exits 1 repeating that line on stderr."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python").write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    (bindir / "python").chmod(0o755)
    monkeypatch.chdir(REPO)
    rc = main(["submit", "--address", ray_head, "--env", f"PATH={bindir}:/usr/bin:/bin", "--", "pretrain",
               "--config", CONFIG, f"data.path={tmp_path}", f"trainer.out_dir={tmp_path / 'run'}"])
    cap = capsys.readouterr()
    assert rc == 1 and cap.out.splitlines()[-1].endswith(": FAILED"), cap.out[-3000:]
    errors = [ln for ln in cap.err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "lacks" in errors[0] and "cluster/README.md" in errors[0], cap.err[-2000:]
    assert "Traceback" not in cap.out
