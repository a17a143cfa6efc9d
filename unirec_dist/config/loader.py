"""Generic dataclass <-> dict conversion with strict checking (no eval, no import paths).

A field may be typed with a base class that has a `resolve_variant(mapping) -> (dataclass,
mapping)` classmethod (the encoder section: models/encoders/base.py): the mapping then picks the
dataclass it is built as (by its `kind`), and that dataclass's fields are checked strictly.

A dataclass with a `registered_sections() -> {name: dataclass}` classmethod (the task section:
config/train.py) also takes one key per registered component, built as that component's config
dataclass and passed to it together as its `sections` field (which is not a key of its own);
`to_dict` writes them back as keys beside the other fields.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from unirec_dist.errors import ConfigError

T = TypeVar("T")

# the field of a dataclass with registered sections that holds them (see the module docstring)
SECTIONS = "sections"


def _fail(where: str, key: str, msg: str) -> typing.NoReturn:
    raise ConfigError(f"{where}: {key}: {msg}" if key else f"{where}: {msg}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp) or hasattr(tp, "resolve_variant"):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        present = [a for a in args if a is not type(None)]
        if len(present) == 1:   # `X | None`: X's own message (e.g. an unknown key inside a section)
            return _convert(value, present[0], where, key)
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where, key)
            except ConfigError as e:
                errors.append(e)
        _fail(where, key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            _fail(where, key, f"expected {_type_name(tp)}, got {value!r}{hint}")
        return value
    if dataclasses.is_dataclass(tp) or hasattr(tp, "resolve_variant"):
        if not isinstance(value, dict):
            _fail(where, key, f"expected a mapping, got {value!r}")
        if hasattr(tp, "resolve_variant"):
            try:
                tp, value = tp.resolve_variant(value)
            except ConfigError as e:    # a bare "field: message" about one of the mapping's keys
                raise ConfigError(f"{where}: {key + '.' if key else ''}{e}") from None
        return from_dict(tp, value, where=where, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            _fail(where, key, f"expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_convert(v, inner, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            _fail(where, key, f"expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, vt, where, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            _fail(where, key, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(where, key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(where, key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            _fail(where, key, f"expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {tp!r} at {key}")  # a schema bug, not a user error


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config", prefix: str = "") -> T:
    """Build dataclass `cls` from `data`, strictly. `where` names the file for messages."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        _fail(where, prefix, f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]  # cls: a dataclass
    sections_of = getattr(cls, "registered_sections", None)
    registered: dict[str, type] = sections_of() if sections_of is not None else {}
    if registered:
        fields.pop(SECTIONS)
    kwargs: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for k, v in data.items():
        dotted = f"{prefix}.{k}" if prefix else str(k)
        if k in registered:
            sections[k] = _convert(v, registered[k], where, dotted)
            continue
        if k not in fields:
            close = difflib.get_close_matches(str(k), [*fields, *registered], n=1, cutoff=0.6)
            hint = f" (did you mean {(prefix + '.' if prefix else '') + close[0]!r}?)" if close else ""
            valid = ", ".join(sorted([*fields, *registered]))
            _fail(where, dotted, f"unknown key{hint}; valid keys here: {valid}")
        kwargs[k] = _convert(v, hints[k], where, dotted)
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        _fail(where, f"{prefix}.{missing[0]}" if prefix else missing[0], "required key is missing")
    if registered:
        kwargs[SECTIONS] = sections
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            # validate() raises with a bare "key: message"; add the file and prefix.
            _fail(where, prefix, str(e))
    return obj


def to_dict(obj: Any) -> Any:
    """The resolved config as plain data (for manifests and reproducibility)."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            value = to_dict(getattr(obj, f.name))
            if f.name == SECTIONS and hasattr(obj, "registered_sections"):
                out.update(value)           # each registered section under its own key
            else:
                out[f.name] = value
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_overrides(overrides: list[str] | None, where: str = "command line") -> list[tuple[list[str], Any]]:
    """`a.b=value` -> (["a", "b"], yaml-parsed value)."""
    out = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"{where}: override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        out.append((key.strip().split("."), value))
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    for path, value in parse_overrides(overrides):
        node = data
        for p in path[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"command line: override {'.'.join(path)}: {p} is not a mapping")
            node = nxt
        node[path[-1]] = value
    return data


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | os.PathLike | None, overrides: list[str] | None = None) -> T:
    """Read YAML `path` (or start empty), apply overrides, build `cls` strictly."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    where = str(path) if path is not None else "config"
    if overrides:
        where += " (with overrides)"
    return from_dict(cls, data, where=where)
