"""Every configs/serve/*.yaml loads strictly; `unirec serve` flags override the file."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from unirec_dist.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "serve").glob("*.yaml"))


def test_there_are_serve_configs():
    assert {p.name for p in CONFIGS} >= {"default.yaml", "ann.yaml", "ray.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_serve_config_loads(path):
    from unirec_dist.config.loader import load_config
    from unirec_dist.serving.config import ServeConfig

    cfg = load_config(ServeConfig, path)
    assert cfg.host == "127.0.0.1"  # loopback unless told otherwise
    opts = cfg.recommender_options()
    assert opts["index"] in ("exact", "hnsw")
    if cfg.index == "hnsw" and cfg.hnsw is not None:
        assert opts["hnsw"]["ef_search"] >= 1


def _args(*argv: str) -> argparse.Namespace:
    from unirec_dist.cli import build_parser

    return build_parser().parse_args(["serve", *argv])


def test_flags_override_file_and_ray_section():
    from unirec_dist.commands.serve import resolve_config

    ray_yaml = next(p for p in CONFIGS if p.name == "ray.yaml")
    cfg = resolve_config(_args("--config", str(ray_yaml), "--bundle", "b", "--port", "0", "--replicas", "3",
                               "max_k=20"))
    assert cfg.bundle == "b" and cfg.port == 0 and cfg.max_k == 20
    assert cfg.ray is not None and cfg.ray.replicas == 3
    cfg = resolve_config(_args("--bundle", "b"))
    assert cfg.ray is None and cfg.index == "exact" and cfg.host == "127.0.0.1"


@pytest.mark.parametrize("argv, match", [
    ((), "no bundle"),
    (("--bundle", "b", "--port", "70000"), "port"),
    (("--bundle", "b", "--replicas", "0"), "replicas"),
    (("--bundle", "b", "indx=hnsw"), "did you mean 'index'"),
    (("--bundle", "b", "index=faiss"), "index"),
])
def test_bad_serve_settings_are_config_errors(argv, match):
    from unirec_dist.commands.serve import resolve_config

    with pytest.raises(ConfigError, match=match):
        resolve_config(_args(*argv))
