"""CI runs what is on disk: every test file under tests/ is collected by `pytest tests`.

pytest silently skips folders named `dist`, `build`, `venv` and others (`norecursedirs`); the
distributed tests once lived in `tests/dist/` and never ran in CI. This test collects the suite
the way `make test` does and fails if any test file on disk, or the distributed folder as a whole,
is missing from the collection.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _collected() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "", "tests"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return [line for line in out.stdout.splitlines() if "::" in line]


def test_every_test_file_is_collected():
    ids = _collected()
    collected_files = {line.split("::", 1)[0] for line in ids}
    on_disk = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("test_*.py")}
    missing = sorted(on_disk - collected_files)
    assert not missing, f"test files pytest does not collect: {missing}"
    distributed = [i for i in ids if re.match(r"tests/distributed/", i)]
    assert len(distributed) >= 10, f"only {len(distributed)} distributed tests collected"
