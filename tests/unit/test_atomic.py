from __future__ import annotations

import pytest

from unirec_dist.errors import UnirecError
from unirec_dist.utils.atomic import atomic_dir


def test_success_publishes_and_failure_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not out.exists()  # nothing visible until the block completes
    assert (out / "a.txt").read_text() == "1"

    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "other") as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("crash mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dir, no half output


def test_existing_output_needs_overwrite_and_is_replaced_whole(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(UnirecError, match="already exists$"):
        with atomic_dir(out):
            pass
    assert (out / "old.txt").exists()
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

