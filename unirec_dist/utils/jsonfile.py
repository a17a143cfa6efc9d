"""Reading the JSON manifests that describe datasets, checkpoints and bundles."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unirec_dist.errors import UnirecError


def load_json_object(path: Path, error: type[UnirecError]) -> dict[str, Any]:
    """`path` parsed as a JSON object, or `error` with one line (bad JSON, bad encoding, or a
    top-level value that is not an object: each a user-made file problem, never a traceback)."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e.msg if isinstance(e, json.JSONDecodeError) else e.reason})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
