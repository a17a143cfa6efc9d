"""cluster/: the YAMLs parse and say what the README says; the SLURM script is valid bash."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def test_cluster_launcher_yaml():
    c = load("ray-cluster.yaml")
    assert c["provider"]["type"] in ("aws", "gcp")
    types = c["available_node_types"]
    assert c["head_node_type"] in types and types[c["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = [t for name, t in types.items() if name != c["head_node_type"]]
    assert gpu and gpu[0]["max_workers"] >= 1 and gpu[0]["node_config"]["InstanceType"].startswith(("g", "p"))
    assert any("make install TARGET=cuda" in cmd for cmd in c["setup_commands"])
    assert any("ray start --head" in cmd for cmd in c["head_start_ray_commands"])
    assert any("--address=$RAY_HEAD_IP" in cmd for cmd in c["worker_start_ray_commands"])
    excluded = set(c["rsync_exclude"])
    assert {".venv", "runs", "data", ".git"} <= excluded


def test_kuberay_rayjob():
    j = load("kuberay-rayjob.yaml")
    assert j["apiVersion"] == "ray.io/v1" and j["kind"] == "RayJob"
    spec = j["spec"]
    assert spec["entrypoint"].startswith("unirec pretrain --config ") and "--address auto" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    rc = spec["rayClusterSpec"]
    assert rc["rayVersion"] == "2.60.0"
    head = rc["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert 8265 in [p["containerPort"] for p in head["ports"]]
    (group,) = rc["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert head["image"] == worker["image"]
    for c in (head, worker):   # the same shared volume on every pod
        assert "/data" in [m["mountPath"] for m in c["volumeMounts"]]


def test_dockerfile_installs_with_the_makefile():
    text = (CLUSTER / "Dockerfile").read_text()
    assert "make install TARGET=${TARGET}" in text and "ARG TARGET=cuda" in text
    for path in ("requirements/", "unirec_dist/", "launch/", "pyproject.toml", "Makefile"):
        assert f"COPY {path}" in text or f" {path}" in text


def test_ray_version_matches_pyproject():
    pyproject = (CLUSTER.parent / "pyproject.toml").read_text()
    assert '"ray[default,train]==2.60.0"' in pyproject    # if this moves, rayVersion above moves too


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_slurm_script_is_valid_bash():
    script = CLUSTER / "slurm-ray.sbatch"
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = script.read_text()
    assert "#SBATCH --nodes=" in text
    assert "ray start --head --block" in text and "ray start --block --address=" in text
    assert "unirec pretrain" in text and "ray stop" not in text   # stops only its own steps


def test_readme_has_a_section_per_file():
    readme = (CLUSTER / "README.md").read_text()
    for name in ("ray-cluster.yaml", "kuberay-rayjob.yaml", "Dockerfile", "slurm-ray.sbatch"):
        assert name in readme
