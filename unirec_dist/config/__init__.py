"""Typed configs: dataclasses are the schema, YAML files are data.

`load_config(SchemaCls, path, overrides)` reads YAML, applies `key.sub=value` overrides, and
builds the dataclass tree, rejecting unknown keys (with the nearest valid one suggested),
wrong types, and out-of-range values (each dataclass may define `validate()`), all as
`ConfigError` naming the file and the dotted key.
"""
from __future__ import annotations

from unirec_dist.config.loader import from_dict, load_config, parse_overrides, to_dict

__all__ = ["from_dict", "load_config", "parse_overrides", "to_dict"]
