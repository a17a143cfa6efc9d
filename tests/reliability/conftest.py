"""Shared pieces of the adversarial suite: the CLI run in-process or as a real subprocess, the
file-system checks every case makes (inputs intact, no output, no temp leftovers), real tmpfs
mounts (read-only, full), and one small dataset / checkpoint / bundle for the whole session."""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEBUG = str(REPO / "configs/pretrain/debug.yaml")
FINETUNE = str(REPO / "configs/finetune/debug.yaml")


# -- running the CLI --------------------------------------------------------------------------
def run_cli(capsys, *argv: str) -> tuple[int, str, list[str]]:
    """`unirec ARGV` in this process: (exit code, stdout, stderr lines)."""
    from unirec_dist.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, [ln for ln in cap.err.splitlines() if ln.strip()]


def one_error(rc: int, err: list[str], *fragments: str) -> str:
    """Exit 2 and exactly one `error:` line on stderr (log lines aside), containing `fragments`."""
    errors = [ln for ln in err if ln.startswith("error: ")]
    assert rc == 2, (rc, err[-5:])
    assert len(errors) == 1, err[-10:]
    assert not any("Traceback" in ln for ln in err), err[-10:]
    for f in fragments:
        assert f in errors[0], (f, errors[0])
    return errors[0]


def cli_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "unirec_dist", *[str(a) for a in argv]]


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def start_cli(*argv: str, cwd: Path | str = REPO, **kw) -> subprocess.Popen:
    """`python -m unirec_dist ARGV` as a real process (its own session: a test can signal it alone)."""
    return subprocess.Popen(cli_command(*argv), cwd=cwd, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


# -- the file system afterwards ---------------------------------------------------------------
def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256): the 'input intact' check."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(*dirs: Path) -> list[str]:
    """Temp or backup entries of ours (`.NAME.tmp-*`, `.NAME.old-*`) in `dirs`."""
    found = []
    for d in dirs:
        if d.is_dir():
            found += [str(p) for p in d.iterdir() if p.name.startswith(".") and (".tmp" in p.name or ".old-" in p.name)]
    return found


def fill(where: Path) -> None:
    """Write `where/fill` until the file system has no byte left."""
    with contextlib.suppress(OSError), open(where / "fill", "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()


@contextlib.contextmanager
def tmpfs(where: Path, read_only: bool = False, full: bool = False, size: str = "1m") -> Iterator[Path]:
    """A real tmpfs at `where` (read-only, or filled to the last byte); skips where mounting is
    not allowed (it needs root / CAP_SYS_ADMIN)."""
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip() or 'mount failed'}); "
                    f"the read-only and full-disk cases need root or CAP_SYS_ADMIN")
    try:
        if full:
            fill(where)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


# -- shared artefacts -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def raw(tmp_path_factory) -> Path:
    """A synthetic raw log with an item table and its dataset YAML (raw/synthetic.yaml)."""
    from tests.synthetic import write_synthetic_log

    return write_synthetic_log(tmp_path_factory.mktemp("rel-raw") / "raw")


@pytest.fixture(scope="session")
def dataset(raw, tmp_path_factory) -> Path:
    from unirec_dist.config.dataset import DatasetConfig
    from unirec_dist.config.loader import load_config
    from unirec_dist.data.prepare import prepare

    return prepare(load_config(DatasetConfig, raw), tmp_path_factory.mktemp("rel-ds") / "prepared")


@pytest.fixture(scope="session")
def checkpoint(dataset, tmp_path_factory) -> Path:
    """The checkpoint `unirec train` names on its last line (`checkpoint: PATH`)."""
    import io
    from contextlib import redirect_stdout

    from unirec_dist.cli import main

    out = tmp_path_factory.mktemp("rel-run") / "run"
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["train", "--config", DEBUG, f"data.path={dataset}", f"trainer.out_dir={out}",
                   "trainer.max_epochs=1"])
    assert rc == 0
    return Path(buf.getvalue().strip().splitlines()[-1].split("checkpoint: ")[1])


@pytest.fixture(scope="session")
def bundle(checkpoint, tmp_path_factory) -> Path:
    from unirec_dist.cli import main

    out = tmp_path_factory.mktemp("rel-bundle") / "bundle"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--ann", "hnsw",
                 "--hnsw-m", "8", "--hnsw-ef-construction", "40"]) == 0
    return out
