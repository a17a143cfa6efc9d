"""Imports point one way: the lower layers never import the layers built on them.

serving/ and checkpoint/ rebuild models through models/factory.py, never through training/;
checkpoint/ (DCP + manifest) knows nothing of the serving bundle. Checked twice: statically over
every import statement (function-level ones included, which a sys.modules check would miss
until the function runs) and by importing the serving and checkpoint modules in a fresh
interpreter.
"""
from __future__ import annotations

import ast
import re
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
    "tasks": _TOP | {"serving", "checkpoint", "config"},
    "metrics": _TOP | {"serving", "checkpoint", "tasks"},
    "serving": _TOP,
    "config": _TOP | {"serving", "checkpoint", "metrics", "data"},
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


_FLAG = re.compile(r"(?<![\w-])--[a-z]")
LAUNCH = ROOT.parent / "launch"


def _library_files() -> list[tuple[str, Path]]:
    """(name relative to the repo, path) of every module outside the commands layer (cli.py,
    commands/): the library and the Ray-side entry points in launch/."""
    files = sorted(ROOT.rglob("*.py")) + sorted(LAUNCH.rglob("*.py"))
    out = [(f.relative_to(ROOT.parent).as_posix(), f) for f in files]
    return [(rel, f) for rel, f in out if rel != "unirec_dist/cli.py" and not rel.startswith("unirec_dist/commands/")]


def _raised_text(node: ast.Raise) -> str:
    return " ".join(c.value for c in ast.walk(node.exc) if isinstance(c, ast.Constant) and isinstance(c.value, str))


def test_library_errors_name_no_cli_flags():
    """Errors raised outside the commands layer name files, config keys and values, never a CLI
    flag: the same functions run from Python, Ray jobs and the HTTP app, where no flag exists.
    The commands layer (cli.py, commands/) adds the flag where one is the way out. launch/ is
    checked too: its functions take values (a requirements file, a worker count), not flags."""
    bad = []
    for rel, f in _library_files():
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Raise) and node.exc is not None and _FLAG.search(_raised_text(node)):
                bad.append(f"{rel}:{node.lineno}: {_raised_text(node)[:80]}")
    assert not bad, "\n".join(bad)


def test_cli_start_imports_no_heavy_stack():
    """`import unirec_dist.cli` and building the whole parser (what `unirec --help` does) import
    none of torch, Ray, Lightning, TorchRec, pyarrow, numpy: each command imports what it needs
    when it runs."""
    code = (
        "import sys\n"
        "import unirec_dist.cli\n"
        "unirec_dist.cli.build_parser()\n"
        "print(sorted(m for m in ('torch', 'ray', 'lightning', 'torchrec', 'pyarrow', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout


# standard-library modules whose import costs enough to defer (network stack, processes, C types)
_COSTLY_STDLIB = {"urllib.request", "concurrent.futures", "multiprocessing", "ctypes"}


def test_imports_inside_functions_defer_something():
    """Outside the commands layer (cli.py, commands/: kept lazy so `unirec --help` is cheap), an
    import inside a function must defer a real cost: never a module the file already imports at
    the top, never a cheap standard-library module."""
    bad = []
    for rel, f in _library_files():
        tree = ast.parse(f.read_text(), str(f))
        top = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                top.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                top.add(node.module)
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    mods = [node.module]
                else:
                    continue
                for m in mods:
                    if m in top:
                        bad.append(f"{rel}:{node.lineno}: {m} is already imported at the top")
                    elif m.split(".")[0] in sys.stdlib_module_names and m not in _COSTLY_STDLIB:
                        bad.append(f"{rel}:{node.lineno}: standard-library {m} belongs at the top")
    assert not bad, "\n".join(bad)
