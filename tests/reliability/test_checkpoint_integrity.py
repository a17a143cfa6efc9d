"""Adversarial checkpoints: every reader (evaluate, recommend, export, finetune --from, train
--resume) refuses a damaged, tampered or old-layout checkpoint with one `error:` line (exit 2),
never runs code planted in it, and leaves the file system as it was; train/finetune never replace
a previous run without being asked, and `--resume` continues a run exactly."""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from unirec_dist.cli import main

REPO = Path(__file__).resolve().parents[2]
TRAIN = str(REPO / "configs/pretrain/debug.yaml")
FINETUNE = str(REPO / "configs/finetune/debug.yaml")
BIG = "__0_0.distcp"


class Evil:
    """A pickle that, when loaded, creates a marker file (what an attacker's payload would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tests.synthetic import prepared_dataset

    tmp = tmp_path_factory.mktemp("ckpt")
    ds = prepared_dataset(tmp / "ds", n_users=60)
    run = tmp / "run"
    assert main(["train", "--config", TRAIN, f"data.path={ds}", f"trainer.out_dir={run}", "trainer.max_epochs=2",
                 "trainer.loggers=[]", "data.batch_size=32"]) == 0
    last = run / "checkpoints" / "last"
    assert (last / BIG).stat().st_size > 200_000     # big enough to cut to 100 KB and to half
    return {"tmp": tmp, "ds": ds, "run": run}


@pytest.fixture
def ck(world, tmp_path):
    """A private copy of the trained run (symlinks kept): (run dir, its `last` step folder)."""
    run = tmp_path / "run"
    shutil.copytree(world["run"], run, symlinks=True)
    return run, (run / "checkpoints" / "last").resolve()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


def one_error(capsys, rc: int) -> str:
    """Exit 2 and exactly one `error:` line, the last one, no traceback (INFO log lines may precede it)."""
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("error: ")]
    assert rc == 2 and len(errors) == 1 and err[-1] == errors[0], (rc, err)
    assert not any("Traceback" in line for line in err), err
    return errors[0]


def readers(tmp: Path, ds: Path, target: Path) -> dict[str, list[str]]:
    """The command lines that read a checkpoint, writing (if at all) under `tmp/out*`."""
    return {
        "evaluate": ["evaluate", "--checkpoint", str(target), "--k", "10"],
        "recommend": ["recommend", "--checkpoint", str(target), "--users", "1000", "--k", "5",
                      "--out", str(tmp / "out.parquet")],
        "export": ["export", "--checkpoint", str(target), "--out", str(tmp / "out-bundle")],
        "finetune": ["finetune", "--from", str(target), "--config", FINETUNE, f"data.path={ds}",
                     f"trainer.out_dir={tmp / 'out-ft'}", "trainer.loggers=[]"],
    }


def assert_no_outputs(tmp: Path) -> None:
    left = [p.name for p in tmp.iterdir() if p.name.startswith("out")]
    assert not left, left


def rehash(step: Path, names: list[str] | None = None) -> None:
    """What an attacker who also edits manifest.json does: the recorded sizes/hashes match again."""
    from unirec_dist.checkpoint.dcp import file_digests

    mf = json.loads((step / "manifest.json").read_text())
    mf["files"] = file_digests(step)
    (step / "manifest.json").write_text(json.dumps(mf))


# -- 2. integrity: truncated, emptied, flipped, missing files -------------------------------------
def _cut(n):
    return lambda f: f.write_bytes(f.read_bytes()[:n(f)])


DAMAGE = {
    "distcp-100KB": (BIG, _cut(lambda f: 100_000), "truncated or replaced"),
    "distcp-half": (BIG, _cut(lambda f: f.stat().st_size // 2), "truncated or replaced"),
    "distcp-empty": (BIG, _cut(lambda f: 0), "truncated or replaced"),
    "metadata-100B": (".metadata", _cut(lambda f: 100), "truncated or replaced"),
    "distcp-flipped-byte": (BIG, lambda f: f.write_bytes(bytes([f.read_bytes()[0] ^ 1]) + f.read_bytes()[1:]),
                            "sha256 does not match"),
    "distcp-missing": (BIG, lambda f: f.unlink(), "is missing"),
    "metadata-missing": (".metadata", lambda f: f.unlink(), "is missing"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_file_is_one_line_naming_it(world, ck, tmp_path, capsys, damage):
    run, step = ck
    name, how, msg = DAMAGE[damage]
    how(step / name)
    before = snapshot(run)
    rc = main(readers(tmp_path, world["ds"], run / "checkpoints" / "last")["evaluate"])
    line = one_error(capsys, rc)
    assert msg in line and str(step / name) in line, line
    assert snapshot(run) == before


@pytest.mark.parametrize("command", ["recommend", "export", "finetune"])
def test_every_reader_verifies_before_loading(world, ck, tmp_path, capsys, command):
    run, step = ck
    _cut(lambda f: f.stat().st_size // 2)(step / BIG)
    before = snapshot(run)
    rc = main(readers(tmp_path, world["ds"], run / "checkpoints" / "last")[command])
    line = one_error(capsys, rc)
    assert "truncated or replaced" in line and BIG in line, line
    assert snapshot(run) == before
    assert_no_outputs(tmp_path)


def test_resume_verifies_before_loading(world, ck, capsys):
    run, step = ck
    _cut(lambda f: f.stat().st_size // 2)(step / BIG)
    before = snapshot(run / "checkpoints")
    rc = main(["train", "--config", TRAIN, "--resume", f"data.path={world['ds']}", f"trainer.out_dir={run}",
               "trainer.max_epochs=3", "trainer.loggers=[]", "data.batch_size=32"])
    assert "truncated or replaced" in one_error(capsys, rc)
    assert snapshot(run / "checkpoints") == before


# -- 1. no code from a checkpoint ------------------------------------------------------------------
@pytest.mark.parametrize("command, rehashed", [("evaluate", False)] + [
    (c, True) for c in ("evaluate", "recommend", "export", "finetune")])
def test_malicious_metadata_never_runs(world, ck, tmp_path, capsys, command, rehashed):
    """A crafted `.metadata` pickle: refused by the hash check, and, when the attacker also rewrote
    the manifest's hashes, by the allow-listed unpickler: the payload never runs."""
    run, step = ck
    marker = tmp_path / "pwned"
    (step / ".metadata").write_bytes(pickle.dumps(Evil(marker)))
    if rehashed:
        rehash(step)
    rc = main(readers(tmp_path, world["ds"], run / "checkpoints" / "last")[command])
    line = one_error(capsys, rc)
    assert not marker.exists()
    assert ("refused to load posix.system" in line) if rehashed else ("truncated or replaced" in line), line
    assert_no_outputs(tmp_path)


def test_malicious_metadata_through_the_real_command(world, ck, tmp_path):
    """The same through `python -m unirec_dist evaluate` in its own process."""
    import subprocess
    import sys

    run, step = ck
    marker = tmp_path / "pwned"
    (step / ".metadata").write_bytes(pickle.dumps(Evil(marker)))
    rehash(step)
    proc = subprocess.run([sys.executable, "-m", "unirec_dist", "evaluate", "--checkpoint", str(run)],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "refused to load posix.system" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not marker.exists()


def _rewrite(step: Path, edit) -> None:
    """Re-save the checkpoint's DCP files with `edit(state)` applied (the test's own, trusted,
    full read of its files), then rehash the manifest as an attacker would."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    pt = step.parent / "full.pt"
    dcp_to_torch_save(step, pt)
    state = torch.load(pt, weights_only=False)
    pt.unlink()
    edit(state)
    for f in step.iterdir():
        if f.name != "manifest.json":
            f.unlink()
    dcp.save(state, checkpoint_id=str(step), no_dist=True)
    rehash(step)


def test_malicious_model_entry_never_runs(world, ck, tmp_path, capsys):
    """A weight replaced by a pickled object (DCP would torch.load it with weights_only=False)."""
    run, step = ck
    marker = tmp_path / "pwned"

    def edit(state):
        key = sorted(state["model"])[0]
        state["model"][key] = Evil(marker)

    _rewrite(step, edit)
    rc = main(readers(tmp_path, world["ds"], run / "checkpoints" / "last")["evaluate"])
    assert "stored as pickled bytes" in one_error(capsys, rc)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["referenced-by-manifest", "old-trainer_state-key"])
def test_malicious_trainer_state_never_runs(world, ck, tmp_path, capsys, how):
    """A pickled trainer-state entry: one the manifest's JSON trainer state points to is refused;
    the old layout's pickled `trainer_state` entry is never even read (the run resumes)."""
    run, step = ck
    marker = tmp_path / "pwned"
    key = "t_evil" if how == "referenced-by-manifest" else "trainer_state"

    def edit(state):
        if how == "referenced-by-manifest":
            state.setdefault("trainer", {})[key] = Evil(marker)
        else:
            state[key] = Evil(marker)

    _rewrite(step, edit)
    if how == "referenced-by-manifest":
        mf = json.loads((step / "manifest.json").read_text())
        mf["trainer"]["extra"] = {"__tensor__": key, "shape": [], "dtype": "float32"}
        (step / "manifest.json").write_text(json.dumps(mf))
    rc = main(["train", "--config", TRAIN, "--resume", f"data.path={world['ds']}", f"trainer.out_dir={run}",
               "trainer.max_epochs=3", "trainer.loggers=[]", "data.batch_size=32"])
    assert not marker.exists()
    if how == "referenced-by-manifest":
        assert "stored as pickled bytes" in one_error(capsys, rc)
    else:
        assert rc == 0


# -- 3. one layout, one resolver, old layouts named ------------------------------------------------
def test_every_way_to_name_a_checkpoint_resolves(world, ck):
    from unirec_dist.checkpoint.dcp import resolve_checkpoint

    run, step = ck
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    assert resolve_checkpoint(step) == step
    assert resolve_checkpoint(run / "checkpoints" / "last") == step == newest
    assert resolve_checkpoint(run / "checkpoints") == newest
    assert resolve_checkpoint(run) == newest


@pytest.mark.parametrize("case, msg", [
    ("old-layout", "older unirec checkpoint layout; re-train it"),
    ("old-layout-export", "older unirec checkpoint layout; re-train it"),
    ("dangling-pointer", "which is missing or incomplete"),
    ("pointer-outside", "not a step folder beside it"),
    ("no-manifest", "no manifest.json and no complete step-* folder"),
    ("manifest-not-json", "not valid JSON"),
    ("newer-layout", "layout_version 99 is not supported"),
    ("bad-trainer-dtype", "unknown dtype 'os.system'"),
])
def test_unusable_checkpoints_are_one_line(world, ck, tmp_path, capsys, case, msg):
    run, step = ck
    target = run / "checkpoints" / "last"
    mf_path = step / "manifest.json"
    mf = json.loads(mf_path.read_text())
    argv = readers(tmp_path, world["ds"], target)["evaluate"]
    if case.startswith("old-layout"):
        # what format_version 1 wrote: checkpoints/last as a real folder, no hashes, no layout_version
        del mf["layout_version"], mf["files"], mf["trainer"]
        mf["format_version"] = 1
        mf_path.write_text(json.dumps(mf))
        target.unlink()
        step.rename(target)
        if case == "old-layout-export":
            argv = readers(tmp_path, world["ds"], target)["export"]
    elif case == "dangling-pointer":
        shutil.rmtree(step)
    elif case == "pointer-outside":
        target.unlink()
        os.symlink(str(tmp_path), target)
    elif case == "no-manifest":
        mf_path.unlink()
        argv = readers(tmp_path, world["ds"], step)["evaluate"]
    elif case == "manifest-not-json":
        mf_path.write_text("{oops")
    elif case == "newer-layout":
        mf["layout_version"] = 99
        mf_path.write_text(json.dumps(mf))
    elif case == "bad-trainer-dtype":
        mf["trainer"]["extra"] = {"__tensor__": "t9", "shape": [], "dtype": "os.system"}
        mf_path.write_text(json.dumps(mf))
        argv = ["train", "--config", TRAIN, "--resume", f"data.path={world['ds']}", f"trainer.out_dir={run}",
                "trainer.loggers=[]", "data.batch_size=32"]
    before = snapshot(run)
    line = one_error(capsys, main(argv))
    assert msg in line, line
    assert snapshot(run) == before
    assert_no_outputs(tmp_path)


# -- 4. a previous run is never replaced without being asked; --resume continues exactly ------------
@pytest.mark.parametrize("command", ["train", "finetune"])
def test_existing_run_is_refused_without_overwrite(world, ck, tmp_path, capsys, command):
    run, _ = ck
    argv = (["train", "--config", TRAIN] if command == "train" else
            ["finetune", "--from", str(world["run"] / "checkpoints" / "best"), "--config", FINETUNE])
    argv += [f"data.path={world['ds']}", f"trainer.out_dir={run}", "trainer.loggers=[]"]
    before = snapshot(run)
    line = one_error(capsys, main(argv))
    assert f"trainer.out_dir {run} already holds a run" in line and "--overwrite" in line and "--resume" in line
    assert snapshot(run) == before


def test_finetune_never_overwrites_its_own_source(world, ck, capsys):
    run, step = ck
    before = snapshot(run)
    rc = main(["finetune", "--overwrite", "--from", str(run / "checkpoints" / "best"), "--config", FINETUNE,
               f"data.path={world['ds']}", f"trainer.out_dir={run}", "trainer.loggers=[]"])
    assert "holds the checkpoint to fine-tune from" in one_error(capsys, rc)
    assert snapshot(run) == before


def test_resume_without_checkpoints_is_one_line(world, tmp_path, capsys):
    rc = main(["train", "--config", TRAIN, "--resume", f"data.path={world['ds']}",
               f"trainer.out_dir={tmp_path / 'fresh'}"])
    assert "no checkpoints/ to resume from" in one_error(capsys, rc)
    assert not (tmp_path / "fresh").exists()


def test_overwrite_replaces_only_the_run(world, ck, capsys):
    run, step = ck
    (run / "notes.txt").write_text("mine")
    assert main(["train", "--config", TRAIN, "--overwrite", f"data.path={world['ds']}", f"trainer.out_dir={run}",
                 "trainer.max_epochs=1", "trainer.loggers=[]", "data.batch_size=32"]) == 0
    assert (run / "notes.txt").read_text() == "mine"
    assert not step.exists() and not (run / "logs").exists()
    assert os.readlink(run / "checkpoints" / "last") == "step-00000002"


def test_two_plus_two_epochs_equal_four(world, tmp_path):
    """--resume restores model, optimizer, RNG (dropout, negatives) and loop state exactly."""
    import torch

    from unirec_dist.models.factory import load_retriever

    common = ["--config", TRAIN, f"data.path={world['ds']}", "trainer.loggers=[]", "data.batch_size=32"]
    assert main(["train", *common, f"trainer.out_dir={tmp_path / 'straight'}", "trainer.max_epochs=4"]) == 0
    assert main(["train", *common, f"trainer.out_dir={tmp_path / 'split'}", "trainer.max_epochs=2"]) == 0
    assert main(["train", "--resume", *common, f"trainer.out_dir={tmp_path / 'split'}", "trainer.max_epochs=4"]) == 0
    a, ma = load_retriever(tmp_path / "straight" / "checkpoints" / "last")
    b, mb = load_retriever(tmp_path / "split" / "checkpoints" / "last")
    assert ma["step"] == mb["step"] == 8 and mb["epoch"] == 3
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6, msg=k)
    summary = json.loads((tmp_path / "split" / "metrics.json").read_text())
    assert summary["resumed_from"].endswith("step-00000004")


def test_a_run_cut_by_max_steps_mid_epoch_resumes_inside_that_epoch(world, tmp_path):
    """trainer.max_steps stops a run in the middle of epoch 0; resumed with the step limit lifted,
    it finishes epoch 0 and trains epoch 1, ending where the uninterrupted 2-epoch run ends (same
    step, same weights), not one epoch short (Lightning counts the cut epoch as completed)."""
    import torch

    from unirec_dist.models.factory import load_retriever

    common = ["--config", TRAIN, f"data.path={world['ds']}", "trainer.loggers=[]", "data.batch_size=32",
              f"trainer.out_dir={tmp_path / 'cut'}", "trainer.max_epochs=2"]
    assert main(["train", *common, "trainer.max_steps=1"]) == 0
    assert main(["train", "--resume", *common, "trainer.max_steps=-1"]) == 0
    a, ma = load_retriever(world["run"] / "checkpoints" / "last")
    b, mb = load_retriever(tmp_path / "cut" / "checkpoints" / "last")
    assert ma["step"] == 4 and mb["step"] == 4 and mb["epoch"] == ma["epoch"]
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6, msg=k)
