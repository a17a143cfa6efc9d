from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from unirec_dist.config.loader import from_dict, load_config, to_dict
from unirec_dist.errors import ConfigError


@dataclass
class Inner:
    dim: int = 8
    dropout: float = 0.1
    kind: Literal["sasrec", "hstu"] = "sasrec"

    def validate(self) -> None:
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")


@dataclass
class Outer:
    name: str
    model: Inner = field(default_factory=Inner)
    ks: list[int] = field(default_factory=lambda: [10])
    note: str | None = None


def test_builds_nested_and_converts_ints_to_float():
    cfg = from_dict(Outer, {"name": "x", "model": {"dim": 4, "dropout": 0}, "ks": [1, 2]})
    assert cfg.model.dim == 4 and cfg.model.dropout == 0.0 and isinstance(cfg.model.dropout, float)
    assert cfg.ks == [1, 2] and cfg.note is None
    assert to_dict(cfg) == {"name": "x", "model": {"dim": 4, "dropout": 0.0, "kind": "sasrec"}, "ks": [1, 2], "note": None}


def test_unknown_key_suggests_nearest():
    with pytest.raises(ConfigError, match=r"f.yaml: model.dimm: unknown key \(did you mean 'model.dim'\?\)"):
        from_dict(Outer, {"name": "x", "model": {"dimm": 3}}, where="f.yaml")


@pytest.mark.parametrize(
    "data, msg",
    [
        ({"name": "x", "model": {"dim": "big"}}, "model.dim: expected an integer, got 'big'"),
        ({"name": "x", "model": {"dim": True}}, "model.dim: expected an integer, got True"),
        ({"name": "x", "model": {"kind": "hstuu"}}, "model.kind: expected one of 'sasrec', 'hstu', got 'hstuu' (did you mean 'hstu'?)"),
        ({"name": "x", "model": {"dropout": 1.5}}, "model: dropout: must be in [0, 1), got 1.5"),
        ({"name": "x", "ks": 10}, "ks: expected a list, got 10"),
        ({"model": {}}, "name: required key is missing"),
    ],
)
def test_bad_values_name_the_key(data, msg):
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, data, where="f.yaml")
    assert str(e.value) == f"f.yaml: {msg}"


def test_yaml_file_with_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: base\nmodel:\n  dim: 16\n")
    cfg = load_config(Outer, p, ["model.dim=32", "model.kind=hstu", "note=hello", "ks=[5, 20]"])
    assert (cfg.model.dim, cfg.model.kind, cfg.note, cfg.ks) == (32, "hstu", "hello", [5, 20])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(Outer, bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Outer, lst)
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(Outer, None, ["name"])
