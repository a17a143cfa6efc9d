"""`unirec submit` / `unirec jobs` end to end against a local Ray head that this module starts
(`ray start --head --block` with its own ports and temp dir) and stops.

The head is stopped by ending the `ray start --block` process group this test started, not with
`ray stop`: `ray stop` ends every Ray process on the machine, other users' clusters included.
The cluster is a CPU-only head plus, once a test asks, a second node with CPUs (two `ray start`
processes, tests/ray_nodes.py), both with token auth (RAY_AUTH_MODE=token); the CLI reads the auth mode from the
dashboard and sends the token only when asked.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.ray_nodes import RayNodes, ray_env
from unirec_dist.cli import main

CONFIG = "configs/pretrain/debug.yaml"
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    from tests.distributed.toy import free_port

    return free_port()


class SimulatedCluster(RayNodes):
    """A CPU-only head (`--num-cpus 0`, like the shipped cluster definitions: job drivers and the
    dashboard, no training) and, once `add_node()` is called, a second Ray node with CPUs: two
    `ray start --block` processes with their own ports, as on two machines."""

    def start_head(self) -> None:
        proc = super().start_head(num_cpus=0, dashboard=True)
        deadline = time.monotonic() + 60
        while True:   # the Jobs API answers once the dashboard has loaded its job module
            if proc.poll() is not None:
                pytest.fail(f"ray start exited {proc.returncode}: {(self.temp / 'head.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.address}/api/authentication_mode", timeout=2) as r:
                    if r.status == 200:
                        from launch.submit import connect

                        connect(self.address).list_jobs()
                        return
            except Exception:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the dashboard at {self.address} did not come up: {(self.temp / 'head.log').read_text()[-2000:]}")
            time.sleep(0.5)

    @property
    def has_node(self) -> bool:
        return len(self.procs) > 1

    def add_node(self, num_cpus: int = 1) -> None:
        """A node with CPUs joins (idempotent); returns once `ray start` says it joined."""
        if not self.has_node:
            super().add_node(num_cpus)


@pytest.fixture(scope="module")
def cluster():
    # short temp dir: Ray's unix socket paths must stay under ~107 characters
    c = SimulatedCluster(Path(tempfile.mkdtemp(prefix="ur-", dir="/tmp")), ray_env())
    try:
        c.start_head()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def ray_head(cluster):
    """The cluster's dashboard address, with a node that has CPUs."""
    cluster.add_node()
    return cluster.address


def readme_submit_command(readme: Path, config: str) -> str:
    """The `unirec submit ... -- pretrain --config CONFIG ...` command of a README, continuation
    lines joined."""
    text = readme.read_text().replace("\\\n", " ")
    (line,) = [ln.strip() for ln in text.splitlines()
               if ln.strip().startswith("unirec submit --address http://HEAD:8265 -- pretrain") and config in ln]
    return line


def substitute(cmd: str, subs: dict[str, str]) -> list[str]:
    import shlex

    for old, new in subs.items():
        assert cmd.count(old) == 1, f"the README's command changed ({old!r}): {cmd}"
        cmd = cmd.replace(old, new)
    argv = shlex.split(cmd)
    assert argv[0] == "unirec"
    return argv[1:]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tests.synthetic import prepared_dataset

    return prepared_dataset(tmp_path_factory.mktemp("ds"), n_users=40)


def test_cluster_readme_submit_on_a_cpu_only_head_waits_for_a_node_and_finishes(cluster, dataset, tmp_path, capsys,
                                                                                monkeypatch):
    """cluster/README.md's submit command, verbatim but for this machine's address, dataset and
    output paths, one CPU worker (no GPUs here: device auto) and two steps, on a head without
    CPUs: the job asks for its worker and waits; a node joins; the job trains the dim-50 recipe
    sharded and leaves a loadable checkpoint."""
    import threading

    from launch.submit import connect

    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    argv = substitute(readme_submit_command(REPO / "cluster" / "README.md", "configs/pretrain/ml-1m-sasrec.yaml"), {
        "http://HEAD:8265": cluster.address, "--workers 8": "--workers 1", "/shared/prepared/ml-1m": str(dataset),
        "/shared/runs/ml-1m": str(out), "distributed.device=cuda": "distributed.device=auto"})
    argv += ["data.batch_size=16", "trainer.max_epochs=1", "trainer.max_steps=2", "distributed.resource_wait_s=300"]
    grow_later = not cluster.has_node

    client = connect(cluster.address)
    earlier = {job.submission_id for job in client.list_jobs()}      # before this test submits

    def add_node_once_the_job_waits() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for job in client.list_jobs():
                if not job.submission_id or job.submission_id in earlier:
                    continue
                if "waiting up to" in client.get_job_logs(job.submission_id):
                    cluster.add_node()
                    return
                if str(job.status).endswith(("FAILED", "SUCCEEDED", "STOPPED")):
                    return
            time.sleep(1)

    watcher = threading.Thread(target=add_node_once_the_job_waits, daemon=True)
    if grow_later:
        watcher.start()
    rc = main(argv)
    if grow_later:
        watcher.join(timeout=60)
    captured = capsys.readouterr()
    assert rc == 0, captured.out[-3000:] + captured.err[-2000:]
    if grow_later:
        assert "distributed.workers 1 needs 1 CPUs (1 per worker) but the Ray cluster has 0: waiting up to 300 s" in captured.out
    final = out / "checkpoints" / "final"
    assert f"checkpoint: {final}" in captured.out
    summary = json.loads((out / "pretrain.json").read_text())
    assert summary["device"] == "cpu"          # auto, decided from the cluster (no GPUs), not the driver
    m = json.loads((final / "manifest.json").read_text())
    assert m["kind"] == "pretrain" and m["step"] == 2 and m["config"]["model"]["embedding"]["dim"] == 50

    # loadable: the checkpoint written on the cluster loads into one local process
    import torch

    from unirec_dist.models.factory import load_retriever

    model, _ = load_retriever(final, dataset)
    vectors = model.embedding.all_item_vectors()
    assert vectors.shape[1] == 50 and torch.isfinite(vectors).all()


def test_submit_pretrain_succeeds_and_jobs_commands(ray_head, dataset, tmp_path, capsys, monkeypatch):
    """README.md's submit command (paths, workers and steps made small) and the jobs commands."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    argv = substitute(readme_submit_command(REPO / "README.md", "configs/pretrain/ml-100k-sasrec.yaml"), {
        "http://HEAD:8265": ray_head, "--workers 8": "--workers 1", "/shared/prepared/ml-100k": str(dataset),
        "/shared/runs/ml-100k": str(out)})
    rc = main([*argv, "data.batch_size=16", "trainer.max_epochs=1", "trainer.max_steps=2"])
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
    ["submit", "--", "pretrain", "--config", CONFIG, "data.path=/not/visible/from/here"],
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
    # the inner command's config and dataset are loaded and checked before anything is uploaded
    (["pretrain", "--config", "configs/pretrain/nope.yaml"], "pretrain: config configs/pretrain/nope.yaml: no such file"),
    (["pretrain", "--config", CONFIG, "model.embedding.dimm=8"], "model.embedding.dimm"),
    (["pretrain", "--config", CONFIG, "distributed.workers=0"], "distributed.workers: must be >= 1"),
    (["pretrain", "--config", CONFIG], "data.path=data/prepared/ml-100k is relative"),
    (["pretrain", "--config", CONFIG, "data.path=EMPTY_DIR"], "manifest.json"),
    (["train", "--config", CONFIG, "optim.lr=-1"], "optim.lr"),
    (["prepare", "--config", "configs/datasets/ml-100k.yaml", "filter.user_core=x"], "filter.user_core"),
])
def test_inner_command_is_validated_before_connecting(capsys, inner, message, tmp_path):
    # the address does not answer: the command must fail on its arguments first
    inner = [a.replace("EMPTY_DIR", str(tmp_path)) for a in inner]
    assert main(["submit", "--address", f"http://127.0.0.1:{_free_port()}", "--", *inner]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_job_python_without_the_stack_is_one_line(ray_head, dataset, tmp_path, capsys, monkeypatch):
    """A cluster whose `python` lacks the stack (here: this interpreter without site-packages,
    first on the job's PATH): the job ends with one line saying what is missing and where the
    stack belongs, and `submit` exits 1 repeating that line on stderr."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python").write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    (bindir / "python").chmod(0o755)
    monkeypatch.chdir(REPO)
    rc = main(["submit", "--address", ray_head, "--env", f"PATH={bindir}:/usr/bin:/bin", "--", "pretrain",
               "--config", CONFIG, f"data.path={dataset}", f"trainer.out_dir={tmp_path / 'run'}"])
    cap = capsys.readouterr()
    assert rc == 1 and cap.out.splitlines()[-1].endswith(": FAILED"), cap.out[-3000:]
    errors = [ln for ln in cap.err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "lacks" in errors[0] and "cluster/README.md" in errors[0], cap.err[-2000:]
    assert "Traceback" not in cap.out
