"""Publishing a checkpoint survives a crash at every step: `unirec train` is killed (os._exit, like
kill -9, injected through the environment by `unirec_dist.utils.faults`) at each named point of
the publish; afterwards the newest complete checkpoint is found, every pointer names a complete,
verified checkpoint, and `--resume` removes our leftovers and finishes the run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from unirec_dist.cli import main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TRAIN = str(REPO / "configs/pretrain/debug.yaml")


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    from tests.synthetic import prepared_dataset

    return prepared_dataset(tmp_path_factory.mktemp("ds"), n_users=60)


def overrides(ds: Path, out: Path) -> list[str]:
    # 60 users / 32 per batch: 2 steps per epoch, a checkpoint after each epoch (steps 2, 4, 6);
    # keep_last=1 so the second publish prunes
    return [f"data.path={ds}", f"trainer.out_dir={out}", "trainer.max_epochs=3", "trainer.loggers=[]",
            "data.batch_size=32", "trainer.keep_last=1"]


# point (hit number) -> (newest complete step after the crash, where `last` points)
CRASH = {
    "checkpoint.files_written#2": (2, 2),
    "checkpoint.manifest_written#2": (2, 2),
    "checkpoint.renamed#2": (4, 2),
    "checkpoint.pointer_written#2": (4, 4),
    # the first prune comes at step 4, or at step 6 when `best` pins step 2
    "checkpoint.pruning#1": (None, None),
}


@pytest.mark.parametrize("point", list(CRASH))
def test_crash_at_each_publish_step_leaves_a_complete_checkpoint(ds, tmp_path, point):
    from unirec_dist.checkpoint.dcp import MANIFEST, POINTERS, TMP_MARKER, read_manifest, resolve_checkpoint
    from unirec_dist.models.factory import load_retriever

    out = tmp_path / "run"
    env = {**os.environ, "UNIREC_FAULT": point, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "unirec_dist", "train", "--config", TRAIN, *overrides(ds, out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 137, proc.stderr[-2000:]        # killed mid-publish, no cleanup
    root = out / "checkpoints"
    newest, last = CRASH[point]
    if newest is None:
        newest = last = int(resolve_checkpoint(root).name.removeprefix("step-"))
        assert newest in (4, 6)
    assert resolve_checkpoint(root).name == f"step-{newest:08d}"
    assert resolve_checkpoint(root / "last").name == f"step-{last:08d}"
    # every pointer names a complete checkpoint whose files all verify (load_retriever checks them)
    for p in POINTERS:
        if (root / p).is_symlink():
            load_retriever(root / p)
    load_retriever(root)
    # no half checkpoint is visible under a step name: each one's manifest lists its files
    for d in root.glob("step-*"):
        assert (d / MANIFEST).is_file() and read_manifest(d)["files"]
    leftovers = [p for p in root.iterdir() if p.name.startswith(".") and (p / TMP_MARKER).is_file()]
    if point.startswith(("checkpoint.files_written", "checkpoint.pruning")):
        assert leftovers                 # the crash really left a temp folder behind ...
        (root / ".not-ours").mkdir()     # ... and a hidden folder that is not ours stays
        assert main(["train", "--resume", "--config", TRAIN, *overrides(ds, out)]) == 0
        assert not [p for p in root.iterdir() if (p / TMP_MARKER).is_file()]
        assert (root / ".not-ours").is_dir()
        assert os.readlink(root / "last") == "step-00000006"
