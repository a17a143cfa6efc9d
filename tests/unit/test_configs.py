"""Every YAML in configs/ loads and validates against its schema (the config dataclasses)."""
from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _loader(folder: str):
    from unirec_dist.config.dataset import DatasetConfig
    from unirec_dist.config.finetune import load_finetune_config
    from unirec_dist.config.loader import load_config
    from unirec_dist.config.train import load_train_config
    from unirec_dist.serving.config import ServeConfig

    return {
        "datasets": lambda p: load_config(DatasetConfig, p),
        # pretrain YAMLs all feed `unirec train`; those that `unirec pretrain` runs sharded
        # are checked against its schema too (test_every_pretrain_config_loads_as_a_sharded_config)
        "pretrain": load_train_config,
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


@pytest.mark.parametrize("name", ["debug.yaml", "ml-100k-sasrec.yaml", "ml-1m-sasrec.yaml", "ml-1m-hstu.yaml"])
def test_every_pretrain_config_loads_as_a_sharded_config(name):
    """The published ML-1M recipes (dim 50) pretrain as shipped: tables are stored padded to a
    multiple of 4 (FBGEMM's fused kernel), the model keeps dim 50."""
    from unirec_dist.config.distributed import load_pretrain_config
    from unirec_dist.embeddings.features import table_dim

    cfg = load_pretrain_config(CONFIGS / "pretrain" / name)
    assert table_dim(cfg.model.embedding.dim) % 4 == 0
