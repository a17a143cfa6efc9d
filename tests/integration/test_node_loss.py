"""`unirec pretrain --address` on a two-node Ray cluster (a head and a second node on this machine,
each a `ray start` in its own process group, tests/ray_nodes.py): one worker per node
(distributed.placement_strategy), checkpoints in a distributed.storage_path both nodes see, and
the second node lost mid-run with distributed.max_failures exhausted: the run ends with one line
naming the failures and the last good checkpoint, which loads. (The placement check itself, a
strict strategy the cluster cannot satisfy: tests/unit/test_placement_failures.py; here
STRICT_SPREAD passes it on the live cluster's real node list.)

The full recovery (the node comes back, the same job resumes from its checkpoint and finishes, the
global step continuing) takes minutes on 2 cores: bench/node_loss.py, figures in
bench/results/node_loss.md. A worker killed within max_failures on one node:
tests/integration/test_pretrain.py.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.ray_nodes import RayNodes, ray_env, trace_runs, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def pretrain_cmd(dataset: Path, out: Path, address: str, *extra: str) -> list[str]:
    # 60 users, 8 per rank and step, 2 ranks -> 4 steps/epoch, 2 epochs: 8 steps; checkpoints at 3, 6, 8
    return [sys.executable, "-m", "unirec_dist", "pretrain", "--config", "configs/pretrain/debug.yaml",
            "--no-progress", "--workers", "2", "--address", address, f"data.path={dataset}",
            f"trainer.out_dir={out}", "data.batch_size=8", "trainer.max_epochs=2",
            "distributed.sharding.t_item=row_wise", "distributed.checkpoint_every_n_steps=3", *extra]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tests.synthetic import prepared_dataset

    return prepared_dataset(tmp_path_factory.mktemp("ds"), n_users=60)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(nodes, the second node's `ray start` process, the fault folder). The workers take their
    environment from the node they run on, so the fault hooks (utils/faults.py) are set on the
    nodes: after the step-3 checkpoint one worker stops (once), and the kill lands at a known step."""
    faults = tmp_path_factory.mktemp("faults")
    env = ray_env(PYTHONPATH=str(REPO), UNIREC_FAULT="train.step-3", UNIREC_FAULT_ACTION="hang",
                  UNIREC_FAULT_ONCE=str(faults / "stalled"), UNIREC_FAULT_TRACE=str(faults / "trace.txt"))
    nodes = RayNodes(Path(tempfile.mkdtemp(prefix="urn-", dir="/tmp")), env)
    try:
        nodes.start_head(num_cpus=1)
        second = nodes.add_node(num_cpus=1)
        yield nodes, second, faults
    finally:
        nodes.stop()


def test_lost_node_with_max_failures_exhausted_ends_with_one_line(cluster, dataset, tmp_path):
    """STRICT_SPREAD puts one worker on each node; the second node's processes are killed (SIGKILL)
    after the step-3 checkpoint; with max_failures 0 the run ends: exit 2, one `error:` line, no
    traceback, and the step-3 checkpoint published where every reader finds it (`last`)."""
    from unirec_dist.training.build import load_retriever

    nodes, second, faults = cluster
    out, storage, log = tmp_path / "run", tmp_path / "shared", tmp_path / "pretrain.log"
    with open(log, "wb") as f, open(tmp_path / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(
            pretrain_cmd(dataset, out, nodes.gcs, "distributed.placement_strategy=STRICT_SPREAD",
                         f"distributed.storage_path={storage}", "distributed.max_failures=0"),
            cwd=REPO, env=ray_env(PYTHONPATH=str(REPO)), stdout=f, stderr=err)
    try:
        trace = faults / "trace.txt"
        wait_for("a worker to stall after step 3", (faults / "stalled").exists, 300, proc, log)
        wait_for("both workers at step 3", lambda: sum(3 in v for v in trace_runs(trace).values()) == 2, 60, proc, log)
        workers = trace_runs(trace)
        lost = nodes.kill_node(second)
        assert len(workers) == 2 and len([w for w in workers if w[1] in lost]) == 1, (workers, lost)   # one per node
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert rc == 2, stderr + log.read_text()[-3000:]
    ckpt = out / "checkpoints" / "step-00000003"
    assert stderr.strip().splitlines()[-1].startswith(
        "error: the training workers failed 1 time (distributed.max_failures: 0); last error: worker ")
    assert " was lost with its process or node (" in stderr
    assert stderr.strip().endswith(f"; last good checkpoint: {ckpt} (step 3); the same command with --resume continues from it")
    assert [ln for ln in stderr.splitlines() if ln.startswith("error:")] == stderr.strip().splitlines()[-1:]
    assert "Traceback" not in stderr + log.read_text()
    assert (out / "checkpoints" / "last").resolve() == ckpt and not (out / "checkpoints" / "final").exists()
    assert (storage / "debug").is_dir() and not (out / "ray").exists()   # Ray's run in the shared storage
    model, manifest = load_retriever(out / "checkpoints" / "last", dataset)
    assert manifest["step"] == 3 and manifest["world_size"] == 2
    assert manifest["distributed"]["placement_strategy"] == "STRICT_SPREAD"
