"""cluster/slurm-ray.sbatch run on this machine: the README's `sbatch` command, with `sbatch`,
`srun` and `scontrol` replaced by small shims (first on PATH) that run each command here with
the SLURM environment a 2-node allocation gets. The script starts a Ray head and a second Ray
node, waits for both, runs `unirec pretrain` against them to a checkpoint, and stops what it
started.

The shims do what SLURM would for this script and nothing else: `sbatch --nodes=N SCRIPT ARGS`
sets SLURM_JOB_ID / SLURM_JOB_NUM_NODES / SLURM_JOB_NODELIST / SLURM_SUBMIT_DIR /
SLURM_CPUS_PER_TASK and runs the script with bash; `srun [options] CMD` runs CMD; `scontrol show
hostnames A,B` prints one name per line.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SBATCH = r"""#!/usr/bin/env bash
set -euo pipefail
nodes=1
while [ $# -gt 0 ]; do
    case "$1" in
        --nodes=*) nodes=${1#--nodes=}; shift ;;
        -N) nodes=$2; shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
script=$1; shift
names=()
for i in $(seq 0 $((nodes - 1))); do names+=("node$i"); done
export SLURM_JOB_ID=${SHIM_JOB_ID:-$$} SLURM_JOB_NUM_NODES=$nodes SLURM_SUBMIT_DIR=$PWD
export SLURM_JOB_NODELIST=$(IFS=,; echo "${names[*]}") SLURM_CPUS_PER_TASK=${SHIM_CPUS_PER_TASK:-1}
exec bash "$script" "$@"
"""

SRUN = r"""#!/usr/bin/env bash
# every node is this machine: drop srun's own options and run the command
while [ $# -gt 0 ]; do
    case "$1" in
        -w|-N|-n|--nodelist|--nodes|--ntasks) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
exec "$@"
"""

SCONTROL = r"""#!/usr/bin/env bash
[ "$1 $2" = "show hostnames" ] || { echo "scontrol shim: unsupported: $*" >&2; exit 1; }
tr ',' '\n' <<< "$3"
"""


def readme_sbatch_command() -> str:
    """The sbatch command of cluster/README.md's SLURM section (backslash continuations joined)."""
    text = (REPO / "cluster" / "README.md").read_text()
    section = text[text.index("## SLURM"):]
    block = section[section.index("```bash"):]
    block = block[:block.index("```", 3)].replace("\\\n", " ")
    (line,) = [ln for ln in block.splitlines() if "sbatch " in ln]
    return line.strip()


def _free_port() -> int:
    from tests.distributed.toy import free_port

    return free_port()


def test_slurm_script_runs_the_readme_command_on_this_machine(tmp_path):
    from tests.synthetic import prepared_dataset

    data = prepared_dataset(tmp_path / "ds", n_users=40)
    out = tmp_path / "run"
    cmd = readme_sbatch_command()
    # the README's command verbatim, except: this machine's dataset and output paths, CPU
    # workers (no GPUs here) and one training step
    subs = {"WORKERS=8": "WORKERS=1", "/shared/prepared/ml-1m": str(data), "/shared/runs/ml-1m": str(out)}
    for old, new in subs.items():
        assert cmd.count(old) == 1, f"cluster/README.md's sbatch command changed: {cmd}"
        cmd = cmd.replace(old, new)
    assert "sbatch --nodes=2 cluster/slurm-ray.sbatch" in cmd and "CONFIG=configs/pretrain/ml-1m-sasrec.yaml" in cmd
    cmd += " data.batch_size=16 trainer.max_epochs=1 trainer.max_steps=1"

    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, body in (("sbatch", SBATCH), ("srun", SRUN), ("scontrol", SCONTROL)):
        (bindir / name).write_text(body)
        (bindir / name).chmod(0o755)
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update({
        "PATH": f"{bindir}{os.pathsep}{env.get('PATH', '')}",
        "VENV": str(Path(sys.executable).parent.parent),     # this test's environment
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        "GPUS_PER_NODE": "0", "SHIM_CPUS_PER_TASK": "1", "SHIM_JOB_ID": f"t{os.getpid()}",
        "RAY_PORT": str(_free_port()), "DASHBOARD_PORT": str(_free_port()),
        # two Ray nodes on one machine need their own agent ports
        "RAY_HEAD_ARGS": f"--ray-client-server-port={_free_port()} --dashboard-agent-listen-port={_free_port()}",
        "RAY_WORKER_ARGS": f"--dashboard-agent-listen-port={_free_port()}",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    })
    proc = subprocess.Popen(["bash", "-c", cmd], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=600)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)     # anything the script failed to stop
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, log[-4000:]
    assert re.search(r"ray head on node0 \((\d+\.){3}\d+:\d+\), 2 node\(s\), 1 worker\(s\)", log), log[-4000:]
    assert "ray nodes up: 2/2" in log, log[-4000:]
    final = out / "checkpoints" / "final"
    assert f"checkpoint: {final}" in log
    summary = json.loads((out / "pretrain.json").read_text())
    assert summary["workers"] == 1 and summary["device"] == "cpu"     # auto on GPU-less nodes
    m = json.loads((final / "manifest.json").read_text())
    assert m["kind"] == "pretrain" and m["world_size"] == 1 and m["step"] == 1
    assert m["config"]["model"]["embedding"]["dim"] == 50
    # the script stopped its Ray nodes: nothing of this allocation's Ray is left running
    left = subprocess.run(["pgrep", "-f", f"ray-{env['SHIM_JOB_ID']}"], capture_output=True, text=True).stdout
    assert left.strip() == "", left

