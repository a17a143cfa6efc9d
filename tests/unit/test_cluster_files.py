"""cluster/ and the install files, checked without a cloud: the launcher YAML against the schema
shipped inside the installed `ray` package and every command through `bash -n`; the RayJob for
the fields the KubeRay operator requires and its entrypoint through our own config validator;
the Dockerfile and its context; the Makefile's install-target switch with a throwaway VENV."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


# -- Ray cluster launcher ----------------------------------------------------------------------
def test_cluster_launcher_yaml_matches_rays_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(load("ray-cluster.yaml"), schema)


COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands")


@needs_bash
def test_every_launcher_command_is_valid_bash_after_yaml_parsing():
    """YAML reads an unquoted ` #` as a comment: the command that reaches bash is what counts."""
    c = load("ray-cluster.yaml")
    commands = [cmd for key in COMMAND_KEYS for cmd in c.get(key) or []]
    assert len(commands) >= 6
    for cmd in commands:
        r = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd!r}: {r.stderr}"
    # the PATH line reaches ~/.bashrc whole, marker comment included
    assert any(cmd.endswith("# unirec venv' >> ~/.bashrc") for cmd in c["setup_commands"])


def test_cluster_launcher_layout():
    c = load("ray-cluster.yaml")
    types = c["available_node_types"]
    assert types[c["head_node_type"]]["resources"] == {"CPU": 0}     # no training on the head
    (gpu,) = [t for name, t in types.items() if name != c["head_node_type"]]
    assert gpu["max_workers"] >= 1 and gpu["node_config"]["InstanceType"].startswith(("g", "p"))
    setup = " && ".join(c["setup_commands"])
    assert "make install TARGET=cuda" in setup
    assert "mount -t nfs4" in setup and " /shared" in setup                # shared storage on every node
    assert any("ray start --head" in cmd for cmd in c["head_start_ray_commands"])
    assert any("--address=$RAY_HEAD_IP" in cmd for cmd in c["worker_start_ray_commands"])


def test_rsync_excludes_are_anchored_to_the_repository_root():
    """Ray passes rsync_exclude to `rsync --exclude` with the repository as the transfer root
    (a directory source gets a trailing slash), where a leading "/" anchors a pattern. For these
    plain patterns gitwildmatch (Ray's bundled pathspec) matches the same paths as rsync."""
    from ray._private.thirdparty.pathspec import PathSpec

    spec = PathSpec.from_lines("gitwildmatch", load("ray-cluster.yaml")["rsync_exclude"])
    for dropped in ("data/prepared/ml-1m/x.parquet", "runs/demo/x", ".venv/bin/python", ".git/HEAD",
                    "unirec_dist/__pycache__/cli.cpython-311.pyc"):
        assert spec.match_file(dropped), dropped
    for module in sorted(p.relative_to(REPO).as_posix() for p in (REPO / "unirec_dist").rglob("*.py")):
        assert not spec.match_file(module), module
    assert not spec.match_file("unirec_dist/data/prepare.py")


# -- KubeRay -----------------------------------------------------------------------------------
def _containers(template: dict) -> list[dict]:
    return template["spec"]["containers"]


def test_kuberay_rayjob_has_what_the_operator_requires():
    """A focused check of the RayJob CRD (ray.io/v1, KubeRay >= 1.2 for backoffLimit): no
    package ships the CRD's schema."""
    j = load("kuberay-rayjob.yaml")
    assert j["apiVersion"] == "ray.io/v1" and j["kind"] == "RayJob" and j["metadata"]["name"]
    spec = j["spec"]
    assert isinstance(spec["entrypoint"], str) and spec["submissionMode"] in ("K8sJobMode", "HTTPMode")
    assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 0
    assert "1.2" in (CLUSTER / "kuberay-rayjob.yaml").read_text().split("apiVersion")[0]   # the header says so
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    rc = spec["rayClusterSpec"]
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"ray[default,train]=={rc["rayVersion"]}"' in pyproject
    head = rc["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict) and all(isinstance(v, str) for v in head["rayStartParams"].values())
    assert head["rayStartParams"]["num-cpus"] == "0"
    (group,) = rc["workerGroupSpecs"]
    assert group["groupName"] and isinstance(group["rayStartParams"], dict)
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    pods = [head["template"], group["template"]]
    for pod in pods:
        (c,) = _containers(pod)
        assert c["name"] and c["image"]
        volumes = {v["name"] for v in pod["spec"].get("volumes", [])}
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        assert set(mounts) <= volumes and mounts["data"] == "/data"        # the same shared volume
    assert _containers(pods[0])[0]["image"] == _containers(pods[1])[0]["image"]
    assert 8265 in [p["containerPort"] for p in _containers(pods[0])[0]["ports"]]
    assert int(_containers(pods[1])[0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1


def test_kuberay_entrypoint_config_passes_our_validator():
    """The RayJob's `unirec pretrain ...` parsed and its config loaded by `unirec submit`'s own
    check (the image's /opt/unirec is this repository)."""
    from launch.submit import check_inner_config

    argv = shlex.split(load("kuberay-rayjob.yaml")["spec"]["entrypoint"])
    assert argv[:2] == ["unirec", "pretrain"] and "--address" in argv
    argv = [a.replace("/opt/unirec/", "") for a in argv]
    check_inner_config(argv[1:], REPO)


def _readme_submit_commands() -> list[list[str]]:
    out = []
    for readme in (REPO / "README.md", CLUSTER / "README.md"):
        text = readme.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("unirec submit ") and " -- pretrain " in line and "..." not in line.split("#")[0]:
                out.append(shlex.split(line.split("  #")[0]))
    return out


def test_readme_submit_commands_pass_the_client_checks():
    from launch.submit import check_inner_config

    commands = _readme_submit_commands()
    assert len(commands) >= 3
    for argv in commands:
        inner = argv[argv.index("--") + 1:]
        check_inner_config(inner, REPO)
        assert any(a.startswith("data.path=/") for a in inner), argv     # absolute: the cluster's path


# -- Docker ------------------------------------------------------------------------------------
def test_dockerfile_installs_with_the_makefile_and_never_imports_torchrec():
    text = (CLUSTER / "Dockerfile").read_text()
    assert "make install TARGET=${TARGET}" in text and "ARG TARGET=cuda" in text
    imports = [ln for ln in text.splitlines() if "python -c" in ln and not ln.lstrip().startswith("#")]
    assert imports and not [ln for ln in imports if "torchrec" in ln or "fbgemm" in ln], imports
    for path in ("requirements/", "unirec_dist/", "launch/", "configs/", "pyproject.toml", "Makefile"):
        assert f"COPY {path}" in text or f" {path}" in text


def test_dockerignore_keeps_environments_outputs_and_data_out_of_the_context():
    """Docker's .dockerignore patterns are relative to the context root (the repository)."""
    import fnmatch

    patterns = [ln.strip().rstrip("/") for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        return any(fnmatch.fnmatchcase(p, pat.removeprefix("**/")) if pat.startswith("**/") and "/" not in p
                   else fnmatch.fnmatchcase(p, pat) for p in prefixes for pat in patterns)

    for junk in (".venv", "runs", "data", ".git", "data_cache"):
        assert ignored(junk), junk
    copied = [ln.split()[1] for ln in (CLUSTER / "Dockerfile").read_text().splitlines() if ln.startswith("COPY ")]
    copied += ["unirec_dist/data/prepare.py", "configs/pretrain/ml-1m-sasrec.yaml"]
    for src in copied:
        assert not ignored(src.rstrip("/")), src


# -- SLURM -------------------------------------------------------------------------------------
@needs_bash
def test_slurm_script_is_valid_bash_and_stops_only_its_own_ray():
    script = CLUSTER / "slurm-ray.sbatch"
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = script.read_text()
    assert "ray start --head --block" in text and "ray start --block --address=" in text
    assert "unirec pretrain" in text and "ray stop" not in text
    assert "hostname --ip-address | awk" not in text     # first address could be IPv6


# -- Makefile ----------------------------------------------------------------------------------
FAKE_PYTHON = """#!/usr/bin/env bash
# records every call instead of installing anything
echo "$*" >> "$(dirname "$0")/../calls.log"
"""


def _fake_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(FAKE_PYTHON)
    (venv / "bin" / "python").chmod(0o755)
    return venv


def _make(*args: str) -> subprocess.CompletedProcess:
    # a clean make: nothing inherited from a `make test TARGET=... VENV=...` that runs this test
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "TARGET", "VENV")}
    return subprocess.run(["make", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_install_cuda_after_cpu_switches_the_venv_cleanly(tmp_path):
    venv = _fake_venv(tmp_path)
    r = _make("install", f"VENV={venv}")
    assert r.returncode == 0, r.stderr
    assert (venv / ".installed-cpu").exists()
    calls = (venv / "calls.log").read_text().splitlines()
    assert not [c for c in calls if c.startswith("-m pip uninstall")]
    assert "-m pip install -q -r requirements/cpu.txt" in calls

    (venv / "calls.log").unlink()
    r = _make("install", "TARGET=cuda", f"VENV={venv}")
    assert r.returncode == 0, r.stderr
    calls = (venv / "calls.log").read_text().splitlines()
    uninstall = [i for i, c in enumerate(calls) if c.startswith("-m pip uninstall")]
    install = [i for i, c in enumerate(calls) if "-r requirements/cuda.txt" in c]
    assert len(uninstall) == 1 and len(install) == 1 and uninstall[0] < install[0]
    assert {"torch", "fbgemm-gpu-cpu", "torchrec"} <= set(calls[uninstall[0]].split())
    assert "--extra-index-url https://download.pytorch.org/whl/cu126" in calls[install[0]]
    assert (venv / ".installed-cuda").exists() and not (venv / ".installed-cpu").exists()

    # later plain `make demo` / `make test` keep the installed target: nothing to reinstall
    r = _make("-n", "demo", f"VENV={venv}")
    assert r.returncode == 0 and "pip" not in r.stdout and "unirec demo" in r.stdout, r.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_install_over_a_legacy_stamp(tmp_path):
    """`.installed` (a Makefile that did not record the target) counts as a CPU install."""
    venv = _fake_venv(tmp_path)
    (venv / ".installed").touch()
    assert _make("install", f"VENV={venv}").returncode == 0
    assert "uninstall" not in (venv / "calls.log").read_text()
    assert (venv / ".installed-cpu").exists() and not (venv / ".installed").exists()
    os.utime(venv / ".installed-cpu")
    (venv / ".installed").touch()
    assert _make("install", "TARGET=cuda", f"VENV={venv}").returncode == 0
    assert "uninstall" in (venv / "calls.log").read_text()
