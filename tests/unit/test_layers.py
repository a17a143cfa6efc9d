"""Imports point one way: the lower layers never import the layers built on them.

serving/ and checkpoint/ rebuild models through models/factory.py, never through training/;
checkpoint/ (DCP + manifest) knows nothing of the serving bundle. Checked twice: statically over
every import statement (function-level ones included, which a sys.modules check would miss
until the function runs) and by importing the serving and checkpoint modules in a fresh
interpreter.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import unirec_dist

ROOT = Path(unirec_dist.__file__).parent

# package -> the unirec_dist packages it must not import (at module level or inside a function)
_TOP = {"training", "commands", "cli", "demo", "report"}
FORBIDDEN = {
    # the private-API shims: imported by every layer, they import none
    "compat": _TOP | {"serving", "checkpoint", "models", "tasks", "metrics", "data", "embeddings", "config", "utils",
                      "errors"},
    "errors": _TOP | {"serving", "checkpoint", "models", "tasks", "metrics", "data", "embeddings", "config", "utils"},
    "utils": _TOP | {"serving", "checkpoint", "models", "tasks", "metrics", "data", "embeddings", "config"},
    "embeddings": _TOP | {"serving", "checkpoint", "models", "tasks", "metrics", "data"},
    "checkpoint": _TOP | {"serving", "models", "tasks", "metrics", "data"},
    "data": _TOP | {"serving", "checkpoint", "models", "tasks", "metrics"},
    "models": _TOP | {"serving", "tasks", "metrics"},
    "tasks": _TOP | {"serving", "checkpoint", "metrics"},
    "metrics": _TOP | {"serving", "checkpoint", "tasks"},
    "serving": _TOP,
    "config": _TOP | {"serving", "checkpoint", "tasks", "metrics", "data"},
}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_lower_layers_do_not_import_upper_ones():
    bad = []
    for pkg, forbidden in FORBIDDEN.items():
        files = [ROOT / f"{pkg}.py"] if (ROOT / f"{pkg}.py").is_file() else sorted((ROOT / pkg).rglob("*.py"))
        assert files, pkg
        for f in files:
            for mod in _imports(f):
                parts = mod.split(".")
                if parts[0] == "unirec_dist" and len(parts) > 1 and parts[1] in forbidden:
                    bad.append(f"{f.relative_to(ROOT.parent)} imports {mod}")
    assert not bad, "\n".join(bad)


def test_importing_serving_and_checkpoint_loads_no_training_module():
    mods = ["unirec_dist.serving"] + [
        f"unirec_dist.{pkg}.{f.stem}" for pkg in ("serving", "checkpoint")
        for f in sorted((ROOT / pkg).glob("*.py")) if f.stem != "__init__"
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}:\n"
        "    importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('unirec_dist.training', 'unirec_dist.commands'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_ray_glue_lives_beside_the_strategy_not_in_it():
    """training/strategy.py is Lightning + TorchRec only; Ray Train's side is training/ray_strategy.py,
    with its strategy class defined at module level (picklable, importable, inspectable)."""
    assert not any(m.split(".")[0] == "ray" for m in _imports(ROOT / "training" / "strategy.py"))
    from ray.train.lightning import RayDDPStrategy

    from unirec_dist.training.ray_strategy import RayTorchRecStrategy
    from unirec_dist.training.strategy import TorchRecStrategy

    assert issubclass(RayTorchRecStrategy, TorchRecStrategy) and issubclass(RayTorchRecStrategy, RayDDPStrategy)
    assert RayTorchRecStrategy.__qualname__ == "RayTorchRecStrategy"
    assert RayTorchRecStrategy.per_rank_dirs and RayTorchRecStrategy.strategy_name == "ray_torchrec"
