"""Submitting `unirec` commands to a Ray cluster through the Jobs API (the dashboard's HTTP
endpoint, `http://HEAD:8265`), and following / stopping them.

    client = connect(address)                    # fails in seconds, one line, if nobody answers
    job_id = submit(client, ["pretrain", "--config", ...], runtime_env=build_runtime_env(...))
    status = follow(client, job_id, write)       # streams the driver's output until the job ends

Authentication (Ray 2.60 token auth): a head started with `ray start --head` turns token auth on
when `RAY_AUTH_MODE=token` is set or a token file already exists (`~/.ray/auth_token`), and then
every Jobs API call needs `Authorization: Bearer <token>`. Ray's own client only sends it when
the *client* process has `RAY_AUTH_MODE=token`. Here the dashboard is asked first (its public
`/api/authentication_mode`), and the token is sent only to a cluster that asks for one, looked up
where Ray looks: `RAY_AUTH_TOKEN`, the file named by `RAY_AUTH_TOKEN_PATH`, `~/.ray/auth_token`.

Dependencies on the cluster: the runtime_env ships the working tree (`working_dir`, without
.venv/, runs/, data/, .git and caches), so the code that runs is the code you submit. The
package stack itself (torch <-> FBGEMM pairing, torchrec installed with `--no-deps`) cannot be
expressed as a runtime_env `pip` list (one set of pip options for every package), so it belongs
in the cluster image (cluster/Dockerfile, or `make install TARGET=cuda` in the launcher's setup
commands). `--pip` / `--requirements` add extra packages on top of that image.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import json
import logging
import os
import shlex
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, NoReturn
from urllib.parse import urlparse

from unirec_dist.errors import UnirecError

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
PROBE_TIMEOUT_S = 5.0
# never uploaded: environments, outputs, data, VCS, caches (Ray also honours .gitignore). Ray
# reads these as gitignore patterns relative to the working dir: a leading "/" anchors one to the
# repository root, so "/data/" drops the data folder and keeps the package unirec_dist/data/.
EXCLUDES = [
    "/.venv/", "/venv/", "/runs/", "/data/", "/data_cache/", "/.git/", "__pycache__/", "*.pyc",
    ".pytest_cache/", ".hypothesis/", ".mypy_cache/", ".ruff_cache/", "*.egg-info/",
    "lightning_logs/", "/build/", "/dist/", "/.whl/", "/.gl/",
]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# commands that make no sense as a job on the cluster
NOT_SUBMITTABLE = ("submit", "jobs")


class JobsError(UnirecError):
    """The cluster's Jobs API cannot be reached or refuses the request (unknown job, auth)."""


# -- address and auth -------------------------------------------------------------------------
def resolve_address(address: str | None = None) -> str:
    """--address, else RAY_API_SERVER_ADDRESS / RAY_ADDRESS, else http://127.0.0.1:8265."""
    raw = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    raw = raw.strip().rstrip("/")
    if raw in ("auto", "local") or raw.startswith("ray://"):
        raise JobsError(f"address {raw!r} is not a Jobs API address; use the dashboard's http://HEAD:8265")
    if "://" not in raw:
        raw = f"http://{raw}"
    url = urlparse(raw)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise JobsError(f"address {raw!r}: expected http://HOST:PORT (the Ray dashboard, default port 8265)")
    return raw


def find_token() -> str | None:
    """The token Ray's own loader would use: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            return Path(path).expanduser().read_text().strip() or None
        except OSError:
            raise JobsError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read the token file") from None
    default = Path.home() / ".ray" / "auth_token"
    try:
        return default.read_text().strip() or None
    except OSError:
        return None


def _get(url: str, headers: dict[str, str], timeout: float) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> dict[str, str]:
    """Check that a Ray dashboard answers at `address` within `timeout` seconds and return the
    HTTP headers every Jobs API call needs (the bearer token when the cluster uses token auth)."""
    try:
        code, body = _get(f"{address}/api/authentication_mode", {}, timeout)
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise JobsError(f"Ray dashboard at {address} does not answer ({reason}); is the cluster up?") from None
    headers: dict[str, str] = {}
    mode = "disabled"
    if code == 200:
        try:
            mode = json.loads(body).get("authentication_mode", "disabled")
        except ValueError:
            raise JobsError(f"{address} answers but is not a Ray dashboard") from None
    if mode == "token":
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
            log.warning("RAY_AUTH_MODE=disabled but the cluster at %s uses token auth", address)
        token = find_token()
        if token is None:
            raise JobsError(f"the Ray cluster at {address} uses token auth and no token was found: set RAY_AUTH_TOKEN, "
                            "or RAY_AUTH_TOKEN_PATH, or copy the head's ~/.ray/auth_token (`ray get-auth-token`)")
        headers["Authorization"] = f"Bearer {token}"
    try:
        code, body = _get(f"{address}/api/version", headers, timeout)
    except (OSError, ValueError) as e:
        raise JobsError(f"Ray dashboard at {address} does not answer ({getattr(e, 'reason', None) or e})") from None
    if code in (401, 403):
        raise JobsError(f"the Ray cluster at {address} rejected the auth token (HTTP {code}); "
                        "use the head's token (`ray get-auth-token` there)")
    if code != 200:
        raise JobsError(f"{address} answers HTTP {code} to /api/version: not a Ray dashboard with the Jobs API")
    return headers


def connect(address: str | None = None):
    """A JobSubmissionClient for `address` (resolved as in `resolve_address`), or a one-line
    JobsError within seconds. Ray's client itself has no timeout, so the dashboard is probed
    first."""
    addr = resolve_address(address)
    headers = probe(addr)
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(addr, headers=headers)
    except Exception as e:   # ConnectionError, AuthenticationError, RuntimeError (version)
        raise JobsError(f"Ray Jobs API at {addr}: {e}") from None


def _call(client, what: str, job_id: str | None, fn: Callable[[], Any]) -> Any:
    """Ray's client raises RuntimeError('Request failed with status code 404: ...') for an
    unknown job: turn that (and other refusals) into one line."""
    try:
        return fn()
    except RuntimeError as e:
        msg = str(e)
        if job_id is not None and ("status code 404" in msg or "does not exist" in msg):
            raise JobsError(f"unknown job id {job_id!r} on {client.get_address()}") from None
        raise JobsError(f"{what} failed on {client.get_address()}: {msg.splitlines()[0] if msg else type(e).__name__}") from None


# -- submission -------------------------------------------------------------------------------
def repo_root() -> Path | None:
    """The source tree this package runs from (an editable install / a checkout), else None."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "unirec_dist").is_dir() and (root / "launch").is_dir() else None


def parse_env(pairs: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise JobsError(f"environment variable {p!r}: expected KEY=VALUE")
        env[key] = value
    return env


def read_requirements(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise JobsError(f"requirements file {path}: no such file")
    lines = [ln.split("#", 1)[0].strip() for ln in p.read_text().splitlines()]
    return [ln for ln in lines if ln]


def build_runtime_env(working_dir: str | Path | None = "auto", env: dict[str, str] | None = None,
                      pip: list[str] | None = None, requirements: str | None = None) -> dict[str, Any]:
    """The job's runtime_env.

    working_dir: "auto" ships this source tree (when running from a checkout), a path ships that
    directory, None ships nothing (the image has the package). pip: extra packages installed in
    the job's own virtualenv on top of the cluster image; torchrec is refused here because it
    needs `--no-deps`, which runtime_env pip would apply to every package.
    """
    renv: dict[str, Any] = {}
    if working_dir == "auto":
        working_dir = repo_root()
    if working_dir is not None:
        wd = Path(working_dir).expanduser().resolve()
        if not wd.is_dir():
            raise JobsError(f"working dir {working_dir}: not a directory")
        renv["working_dir"] = str(wd)
        renv["excludes"] = list(EXCLUDES)
    packages = list(pip or []) + (read_requirements(requirements) if requirements else [])
    bad = [p for p in packages if p.lower().replace("_", "-").split("=")[0].split("<")[0].split(">")[0].strip()
           in ("torchrec", "torch", "fbgemm-gpu", "fbgemm-gpu-cpu")]
    if bad:
        raise JobsError(f"extra packages {', '.join(bad)}: must be baked into the cluster image (torch/FBGEMM "
                        "pairing, torchrec installed without its dependencies; see cluster/Dockerfile), not installed per job")
    if packages:
        renv["pip"] = {"packages": packages, "pip_check": False}
    renv["env_vars"] = {"PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0", **(env or {})}
    return renv


def entrypoint_for(command: list[str]) -> str:
    """The shell command the job runs: `pretrain` through its driver (joins the cluster), any
    other subcommand through `python -m unirec_dist`. Validates the inner command first."""
    if not command:
        raise JobsError("nothing to submit: the job's unirec command is empty")
    from unirec_dist.cli import COMMANDS

    name = command[0]
    if name in NOT_SUBMITTABLE or name not in COMMANDS:
        raise JobsError(f"{name!r} is not a unirec command that can run as a job; expected one of "
                        f"{', '.join(c for c in COMMANDS if c not in NOT_SUBMITTABLE)}")
    parse_inner(command)
    if name == "pretrain":
        return shlex.join(["python", "-m", "launch.pretrain_job", *command[1:]])
    return shlex.join(["python", "-m", "unirec_dist", *command])


class _InnerParser(argparse.ArgumentParser):
    """The real parser of a job's command, raising JobsError("<command>: ...") instead of exiting."""

    def __init__(self, *args: Any, command: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.command = command

    def error(self, message: str) -> NoReturn:   # argparse hook: raises instead of exiting
        raise JobsError(f"{self.command}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise JobsError(f"{self.command}: {message or 'invalid arguments'}")


def parse_inner(command: list[str]) -> argparse.Namespace:
    """Parse the inner command with the real parser, so a typo fails here and not on the cluster."""
    name = " ".join(command[:1])
    parser = _InnerParser(prog="unirec", command=name)
    # each command's own parser raises with the command's name too (argparse calls parser_class(**kwargs))
    inner: Any = functools.partial(_InnerParser, command=name)
    sub = parser.add_subparsers(dest="command", parser_class=inner)
    importlib.import_module(f"unirec_dist.commands.{command[0]}").register(sub)
    return parser.parse_args(command)


def _config_loaders() -> dict[str, Callable[[Path, list[str]], Any]]:
    """The schema each submittable command loads its --config with (the same loader it calls)."""
    from unirec_dist.config.distributed import load_pretrain_config
    from unirec_dist.config.finetune import load_finetune_config
    from unirec_dist.config.train import load_train_config

    def dataset(path: Path, overrides: list[str]):
        from unirec_dist.config.dataset import DatasetConfig
        from unirec_dist.config.loader import load_config

        return load_config(DatasetConfig, path, overrides)

    return {"pretrain": load_pretrain_config, "train": load_train_config, "finetune": load_finetune_config,
            "prepare": dataset}


def check_inner_config(command: list[str], working_dir: Path | None) -> None:
    """Load and validate the inner command's --config with its overrides, as the job will, before
    anything is uploaded; and check its dataset (data.path) where this client can see it.

    working_dir: the tree shipped as the job's working_dir (relative paths in the job resolve
    against it), or None when nothing is shipped (the cluster image's own tree: relative paths
    there are not visible here, so they are not checked). A dataset on storage this client does
    not mount is left to the job's own check.
    """
    args = parse_inner(command)
    loader = _config_loaders().get(command[0])
    if loader is None or getattr(args, "config", None) is None:
        return
    config = Path(args.config).expanduser()
    if not config.is_absolute():
        if working_dir is None:
            log.info("not checking %s: a relative path in the cluster image's tree", config)
            return
        config = working_dir / config
        if not config.is_file():
            raise JobsError(f"{command[0]}: config {args.config}: no such file in the uploaded working dir {working_dir}")
    elif not config.is_file():
        log.info("not checking %s: not visible from this machine", config)
        return
    cfg = loader(config, list(getattr(args, "overrides", None) or []))
    if getattr(args, "workers", None) is not None and args.workers < 1:
        raise JobsError(f"{command[0]}: workers must be >= 1, got {args.workers}")
    data = getattr(getattr(cfg, "data", None), "path", None)
    if command[0] not in ("pretrain", "train") or not data:
        return
    path = Path(data).expanduser()
    if not path.is_absolute():
        if working_dir is not None:
            raise JobsError(f"data.path={data} is relative: the job runs in an uploaded copy of the source tree, which "
                            "leaves data/ out; give an absolute path on storage every node sees")
        return
    if not path.exists():
        log.info("not checking data.path=%s: not visible from this machine", data)
        return
    from unirec_dist.embeddings.features import FeatureSpec
    from unirec_dist.training.data import open_prepared

    root, manifest = open_prepared(path)
    FeatureSpec.from_manifest(manifest, where=str(root / "manifest.json")).item_features(
        cfg.model.embedding.item_features)


def submit(client, command: list[str], runtime_env: dict[str, Any] | None = None,
           submission_id: str | None = None) -> str:
    """Submit a unirec command as a Ray job; returns the submission id."""
    entrypoint = entrypoint_for(command)
    log.debug("submitting %s with runtime_env %s", entrypoint, runtime_env)
    return _call(client, "submit", None, lambda: client.submit_job(
        entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id,
        metadata={"submitted_by": "unirec submit", "unirec_command": command[0]},
    ))


# -- following, status, stop ------------------------------------------------------------------
def info(client, job_id: str):
    return _call(client, "status", job_id, lambda: client.get_job_info(job_id))


def status(client, job_id: str) -> str:
    return _status_str(info(client, job_id))


def _status_str(details) -> str:
    s = details.status
    return str(getattr(s, "value", s))


def logs(client, job_id: str) -> str:
    info(client, job_id)
    return _call(client, "logs", job_id, lambda: client.get_job_logs(job_id))


def follow(client, job_id: str, write: Callable[[str], object], poll_s: float = 1.0) -> str:
    """Stream the job's output to `write` until it ends; returns the final status."""
    info(client, job_id)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(tail())
    except Exception as e:   # noqa: BLE001 - the log socket failed or closed early: poll below
        log.debug("log stream ended: %s", e)
    while True:
        s = _status_str(info(client, job_id))
        if s in TERMINAL:
            return s
        time.sleep(poll_s)


def wait(client, job_id: str, timeout_s: float, poll_s: float = 0.5) -> str:
    """Poll until the job is in a terminal state (or `timeout_s` passes); returns its status."""
    deadline = time.monotonic() + timeout_s
    while True:
        s = _status_str(info(client, job_id))
        if s in TERMINAL or time.monotonic() > deadline:
            return s
        time.sleep(poll_s)


def stop(client, job_id: str) -> bool:
    info(client, job_id)
    return bool(_call(client, "stop", job_id, lambda: client.stop_job(job_id)))


def list_jobs(client) -> list:
    jobs = _call(client, "list", None, client.list_jobs)
    return sorted(jobs, key=lambda j: j.start_time or 0)
