"""``section.key=value`` overrides (the command line's ``--set``) on a config dataclass."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List

from pipa_core.config.typed import (
    ConfigError,
    coerce,
    field_types,
    is_str_type,
    is_tuple_type,
    parse_scalar,
    split_override,
    to_plain,
)

__all__ = ["apply_overrides"]


def apply_overrides(cfg: Any, overrides: List[str] | Dict[str, Any]) -> Any:
    """Apply ``section.key=value`` overrides (CLI ``--set``) and return a new config.

    Values are parsed as YAML scalars (``1e-4``, ``true``, ``null``) or
    comma-separated tuples (``data.crop_size=256,256``). A dict maps dotted keys
    to already-typed values.
    """
    items = (
        overrides.items() if isinstance(overrides, dict) else [split_override(o) for o in overrides]
    )
    d = cfg.to_dict()
    for key, raw in items:
        parts = key.split(".")
        node, tp_cls = d, type(cfg)
        for i, p in enumerate(parts):
            types = field_types(tp_cls)
            if p not in types:
                where = ".".join(parts[:i]) or "config"
                raise ConfigError(
                    f"unknown key {key!r}: {where} has no {p!r}; valid keys: {', '.join(types)}"
                )
            tp = types[p]
            if i == len(parts) - 1:
                if dataclasses.is_dataclass(tp):
                    raise ConfigError(
                        f"{key!r} is a section; set one of its keys, e.g. {key}.<name>=..."
                    )
                value = (
                    parse_scalar(raw, key, is_str_type(tp))
                    if isinstance(raw, str) and not is_tuple_type(tp)
                    else raw
                )
                node[p] = to_plain(coerce(value, tp, key))
            else:
                if not dataclasses.is_dataclass(tp):
                    raise ConfigError(f"{'.'.join(parts[: i + 1])!r} is a value, not a section")
                node, tp_cls = node[p], tp
    return type(cfg).from_dict(d)
