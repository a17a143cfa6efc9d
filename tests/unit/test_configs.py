"""Every YAML in configs/ loads and validates against its schema (DESIGN.md convention)."""
from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _loader(folder: str):
    from unirec_dist.config.dataset import DatasetConfig
    from unirec_dist.config.distributed import load_pretrain_config
    from unirec_dist.config.finetune import load_finetune_config
    from unirec_dist.config.loader import load_config
    from unirec_dist.serving.config import ServeConfig

    return {
        "datasets": lambda p: load_config(DatasetConfig, p),
        # pretrain YAMLs feed both `unirec train` and `unirec pretrain`; the latter's schema
        # is the former's plus a `distributed:` section, so it validates both.
        "pretrain": load_pretrain_config,
        "finetune": load_finetune_config,
        "serve": lambda p: load_config(ServeConfig, p),
    }[folder]


YAMLS = sorted(CONFIGS.rglob("*.yaml"))


def test_every_config_folder_has_a_schema():
    folders = {p.relative_to(CONFIGS).parts[0] for p in YAMLS}
    assert folders == {"datasets", "pretrain", "finetune", "serve"}


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_loads(path):
    cfg = _loader(path.relative_to(CONFIGS).parts[0])(path)
    assert cfg is not None and type(cfg).__name__.endswith("Config")
