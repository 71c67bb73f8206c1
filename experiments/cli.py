"""Command-line overrides of any (nested) config dataclass field.

``--model.d_model 512 --optimizer.learning_rate 1e-3 --schedule.kind wsd`` : one flag per
leaf field, named by its dotted path, typed from the field's current value. ``none``
sets an optional field to None; tuples are written as JSON lists.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from typing import Any


def _leaf_fields(cfg, prefix=""):
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _leaf_fields(value, path + ".")
        else:
            yield path, f, value


def _parse_value(text: str, current: Any, field_type: str) -> Any:
    if text.lower() == "none":
        return None
    if isinstance(current, bool) or field_type.startswith("bool"):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
    kind = type(current) if current is not None else None
    if kind is None:  # optional field currently None: infer from the annotation
        kind = int if "int" in field_type and "float" not in field_type else float if "float" in field_type else None
        if "tuple" in field_type:
            kind = tuple
    if kind is tuple:
        parsed = json.loads(text)
        return tuple(tuple(x) if isinstance(x, list) else x for x in parsed)
    if kind in (int, float):
        try:
            return kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from err
    return text


def add_config_args(parser: argparse.ArgumentParser, cfg) -> None:
    """Add one ``--a.b.c`` flag per leaf field of dataclass ``cfg`` (defaults: its values)."""
    group = parser.add_argument_group("config overrides (any field; 'none' for None)")
    for path, f, value in _leaf_fields(cfg):
        group.add_argument(f"--{path}", dest=f"cfg:{path}", default=None, metavar=type(value).__name__.upper(),
                           help=f"default: {value!r}")


def apply_overrides(cfg, args: argparse.Namespace):
    """A copy of ``cfg`` with every flag given on the command line applied (validated)."""
    updates: dict[str, Any] = {}
    for path, f, value in _leaf_fields(cfg):
        text = getattr(args, f"cfg:{path}", None)
        if text is not None:
            updates[path] = _parse_value(text, value, str(f.type))
    return replace_path(cfg, updates)


def replace_path(cfg, updates: dict[str, Any]):
    """``dataclasses.replace`` by dotted paths: {"model.d_model": 512}."""
    nested: dict[str, dict] = {}
    direct = {}
    for path, value in updates.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, sub in nested.items():
        direct[head] = replace_path(getattr(cfg, head), sub)
    return dataclasses.replace(cfg, **direct) if direct else cfg


