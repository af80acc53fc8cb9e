"""Typed dataclass configs from plain data: dict / YAML / JSON / command-line text.

Generic (no training field in here): :func:`from_dict` builds a dataclass from a
nested mapping, coercing each value to its annotation (``Optional``, tuples,
lists, bool / int / float / str) and naming the field and the valid keys when
something does not fit; :func:`to_plain` is the inverse for serialisation.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict

import yaml

__all__ = [
    "ConfigError",
    "coerce",
    "field_types",
    "from_dict",
    "is_str_type",
    "is_tuple_type",
    "parse_scalar",
    "split_override",
    "to_plain",
]


class ConfigError(ValueError):
    """An invalid training configuration; the message lists every problem and its fix."""


def to_plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_plain(v) for v in x]
    return x


def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls, d: dict, where: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(d).__name__}")
    types = field_types(cls)
    unknown = sorted(set(d) - set(types))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where or 'config'}; valid keys: {', '.join(types)}"
        )
    kwargs = {}
    for k, v in d.items():
        tp = types[k]
        path = f"{where}.{k}" if where else k
        if dataclasses.is_dataclass(tp):
            kwargs[k] = from_dict(tp, v, path)
        else:
            kwargs[k] = coerce(v, tp, path)
    return cls(**kwargs)


def _parse_sequence(text: str, path: str) -> list:
    """``"1,2"``, ``"(1, 2)"`` or ``"[1, 2]"`` -> ``[1, 2]`` (items parsed as YAML scalars)."""
    text = text.strip()
    if text[:1] in "([" and text[-1:] in ")]":
        text = text[1:-1]
    try:
        return [yaml.safe_load(v.strip()) for v in text.split(",") if v.strip()]
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{path}: cannot parse {text!r} as a comma-separated list ({exc})"
        ) from None


def coerce(value: Any, tp: Any, path: str) -> Any:
    """Convert ``value`` (from YAML / JSON / the CLI) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return coerce(value, inner, path)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = _parse_sequence(value, path)
        if not isinstance(value, (list, tuple)):
            value = [value]
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], path) for v in value)
        if origin is tuple:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} values, got {list(value)}")
            return tuple(coerce(v, a, path) for v, a in zip(value, args))
        return [coerce(v, args[0], path) for v in value]
    if origin is dict or tp in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        if isinstance(value, str):  # "40000", also "4e4" (YAML reads that as text)
            try:
                value = int(value)
            except ValueError:
                try:
                    value = float(value)
                except ValueError:
                    raise ConfigError(f"{path}: expected an integer, got {value!r}") from None
        if isinstance(value, float):
            if not value.is_integer():  # 1.5 iterations is a typo, not 1
                raise ConfigError(f"{path}: expected an integer, got {value!r}")
            return int(value)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected a number, got {value!r}") from None
    if tp is str:
        return str(value)
    return value


def parse_scalar(text: str, key: str, is_str: bool = False) -> Any:
    # A string field keeps the text as typed: YAML would turn "off" / "yes" into booleans
    # (runtime.amp=off); only "null" / "~" still clear an optional field.
    if is_str:
        return None if text.strip() in ("null", "~", "None") else text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # a plain string (e.g. a path with odd characters)


def is_str_type(tp) -> bool:
    """Whether a field is ``str`` or ``Optional[str]``."""
    args = typing.get_args(tp) if typing.get_origin(tp) is typing.Union else (tp,)
    return str in args and all(a in (str, type(None)) for a in args)


def is_tuple_type(tp) -> bool:
    t = (
        [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) is typing.Union
        else [tp]
    )
    return any(typing.get_origin(a) in (tuple, list) for a in t)


def split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. optim.lr=1e-4")
    k, v = item.split("=", 1)
    return k.strip(), v.strip()
