"""Ray nodes on this machine, as on several machines: each is a `ray start --block` process in its
own session (process group), with its own ports and the cluster's temp dir, so that a test can
lose one node (kill -9 of its process group: raylet, agents and the workers on it) and start
another while the rest of the cluster runs on.

Also what a test of a lost node watches: `trace_runs` (the steps each worker process finished, from
utils/faults.py's UNIREC_FAULT_TRACE) and `wait_for` (a condition, while a command runs).

Never `ray stop`: it ends every Ray process on the machine, other tests' clusters included.
Token auth (Ray 2.60's default for `ray start`): every node and client carries
RAY_AUTH_MODE=token (the token is ~/.ray/auth_token, which `ray start --head` writes if missing).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    from tests.distributed.toy import free_port as port

    return port()


def ray_env(**extra: str) -> dict[str, str]:
    """This process's environment for Ray nodes and clients: token auth, no inherited RAY_ADDRESS,
    this venv's binaries first (a job runs `python`), no 30 s drain on SIGTERM."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("RAY_ADDRESS", None)
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    env["RAY_AUTH_MODE"] = "token"
    env.update(extra)
    return env


def stop_group(proc: subprocess.Popen, timeout_s: float = 40) -> None:
    """Stop a `ray start --block` we started: SIGTERM drains and shuts its node down (a few
    seconds; `timeout_s=0`: no grace); then SIGKILL whatever is left in its process group."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    if timeout_s > 0:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


class RayNodes:
    """A head and worker nodes started with `ray start --block`, each in its own process group,
    under `temp` (short: Ray's unix socket paths must stay under ~107 characters; removed by
    `stop`)."""

    def __init__(self, temp: Path, env: dict[str, str]) -> None:
        self.temp, self.env = temp, env
        self.gcs = f"127.0.0.1:{free_port()}"
        self.dash = free_port()
        self.address = f"http://127.0.0.1:{self.dash}"   # the dashboard (Jobs API), when included
        self.procs: list[subprocess.Popen] = []
        self.logs: list = []

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.temp / f"{name}.log", "wb")
        self.logs.append(log)
        cmd = [RAY, "start", "--block", *args, "--disable-usage-stats",
               "--dashboard-agent-listen-port", str(free_port())]
        proc = subprocess.Popen(cmd, cwd=self.temp, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def _wait_started(self, name: str, proc: subprocess.Popen, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while b"Ray runtime started" not in (self.temp / f"{name}.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start ({name}) did not start: {(self.temp / f'{name}.log').read_text()[-2000:]}")
            time.sleep(0.5)

    def start_head(self, num_cpus: int = 0, dashboard: bool = False) -> subprocess.Popen:
        """The head (GCS); `num_cpus` 0: drivers and the dashboard only, no training."""
        proc = self._start("head", [
            "--head", "--num-cpus", str(num_cpus), "--port", self.gcs.split(":")[1],
            "--dashboard-port", str(self.dash), "--dashboard-host", "127.0.0.1",
            "--include-dashboard", "true" if dashboard else "false",
            "--ray-client-server-port", str(free_port()), "--temp-dir", str(self.temp)])
        self._wait_started("head", proc)
        return proc

    def add_node(self, num_cpus: int = 1, name: str = "node") -> subprocess.Popen:
        """A node with CPUs joins; returns once `ray start` says it joined."""
        proc = self._start(name, ["--address", self.gcs, "--num-cpus", str(num_cpus)])
        self._wait_started(name, proc)
        return proc

    def kill_node(self, proc: subprocess.Popen) -> list[int]:
        """Lose a node as a machine is lost: SIGKILL to its process group and to every process
        below its `ray start` (Ray puts each worker in a process group of its own); returns
        their pids."""
        victims = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
        for p in victims:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait()
        psutil.wait_procs(victims, timeout=10)
        return [p.pid for p in victims]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_group(proc)
        for log in self.logs:
            log.close()
        shutil.rmtree(self.temp, ignore_errors=True)


def trace_runs(trace: Path) -> dict[tuple[str, int], list[int]]:
    """(rank, pid) -> the global steps that worker process finished (UNIREC_FAULT_TRACE's
    `train.step-<N>` points), in order."""
    steps: dict[tuple[str, int], list[int]] = {}
    if trace.exists():
        for line in trace.read_text().splitlines():
            point, rank, pid = line.split()
            if point.startswith("train.step-"):
                steps.setdefault((rank, int(pid)), []).append(int(point.removeprefix("train.step-")))
    return steps


def wait_for(what: str, cond, timeout_s: float, proc: subprocess.Popen | None = None,
             log: Path | None = None) -> None:
    """Poll `cond()` until true; raise (with the end of `log`) on timeout or if `proc` exits."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the command exited {proc.returncode} while waiting for {what}: {tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}: {tail}")
        time.sleep(0.5)
