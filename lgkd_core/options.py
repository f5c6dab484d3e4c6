"""Command-line options generated from a dataclass: each field is defined once, with its type,
default and help, and the parser and the configuration object follow from it.

Field metadata (``dataclasses.field(metadata=...)``):

* ``help``: the option's help (the default is appended);
* ``choices``: the allowed values;
* ``flags``: for a bool, ``(on, off)`` flag names instead of ``--name`` / ``--no-name``;
* ``flag``: another option name (``--set`` for ``method_overrides``);
* ``pairs``: a ``dict`` field given as repeatable ``KEY=VALUE`` items, values parsed as YAML
  scalars (numbers, booleans, null);
* ``cli: False``: not an option (set by code only).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from lgkd_core.io import parse_pairs


def _base_type(hint: Any) -> tuple[type, bool]:
    """(the non-None type of an annotation, whether None is allowed); ``str | Path`` -> str."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else str), optional
    return hint, False


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per field of dataclass ``cls``; fields without a default are required."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("cli") is False:
            continue
        kind, _ = _base_type(hints[f.name])
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not (
            dataclasses.MISSING
        )
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = meta.get("help", "")
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        if kind is bool:
            on, off = meta.get("flags", (flag, "--no-" + f.name.replace("_", "-")))
            group = parser.add_mutually_exclusive_group()
            on_help, off_help = help_text or f"set {f.name}", f"not {on}"
            if default:
                on_help += " (the default)"
            else:
                off_help += " (the default)"
            group.add_argument(on, dest=f.name, action="store_true", help=on_help)
            group.add_argument(off, dest=f.name, action="store_false", help=off_help)
            parser.set_defaults(**{f.name: default})
            continue
        if meta.get("pairs"):
            parser.add_argument(
                flag, dest=f.name, action="append", default=[], metavar="KEY=VALUE", help=help_text
            )
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "type": Path if kind is Path else kind}
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
        if has_default:
            kwargs["default"] = default
            shown = f"default: {default}" if default is not None else ""
            kwargs["help"] = ", ".join(t for t in (help_text, shown) if t) or None
        else:
            kwargs["required"] = True
            kwargs["help"] = help_text or None
        parser.add_argument(flag, **kwargs)


def from_namespace(cls: type, args: argparse.Namespace) -> Any:
    """An instance of dataclass ``cls`` from the parsed options (``pairs`` fields parsed)."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if f.metadata.get("pairs"):
            flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
            value = {k: yaml.safe_load(v) for k, v in parse_pairs(value, flag).items()}
        values[f.name] = value
    return cls(**values)
