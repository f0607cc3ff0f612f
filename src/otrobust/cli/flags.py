"""Flags generated from settings dataclasses (:mod:`otrobust.settings`), and settings read back from them."""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, TypeVar

from otrobust.errors import OtrobustError
from otrobust.settings import default_of
from otrobust.training.config import parse_number

T = TypeVar("T")


def _number(text: str) -> float:
    try:
        value = parse_number(text)
    except OtrobustError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _whole_number(text: str) -> int:
    """A whole-number flag. Its range is the setting's own check (the dataclass names the flag and the bound)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    return value


def add_flags(parser: argparse.ArgumentParser, cls: type, *, layered: bool = False) -> None:
    """One flag per field of the dataclass ``cls`` (``--train-size`` for ``train_size``), its default in --help.

    The annotation gives the flag's type: ``bool`` is ``--x/--no-x``, ``float`` reads ``8/255``, ``int`` a whole
    number, ``list[...]`` one or more of those. ``layered``: a flag not given is absent from the namespace (so that a
    config file's value under it survives) instead of set to the default."""
    for f in dataclasses.fields(cls):
        meta, kind = f.metadata, str(f.type)
        default = default_of(f)
        shown = meta.get("default_text") or ((" ".join(default) or "none") if isinstance(default, list) else default)
        required = meta.get("positional") and meta.get("nargs") != "?"
        kw: dict[str, Any] = {"help": meta.get("help", "") + ("" if required else f" (default: {shown})"),
                              "default": argparse.SUPPRESS if layered else default}
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        if kind.startswith("bool"):
            kw["action"] = argparse.BooleanOptionalAction
        elif kind.startswith("list") and meta.get("repeatable"):
            kw["action"] = "append"
        elif kind.startswith("list"):
            kw["nargs"] = meta.get("nargs") or "+"
            kw["type"] = _number if "float" in kind else _whole_number if "int" in kind else str
        else:
            kw["type"] = _number if "float" in kind else _whole_number if "int" in kind else str
            kw["choices"] = meta.get("choices")
        if meta.get("positional"):
            if required:
                del kw["default"]
            else:
                kw["nargs"] = "?"
            parser.add_argument(f.name, **kw)
        else:
            parser.add_argument(meta.get("flag") or "--" + f.name.replace("_", "-"), *meta.get("aliases", ()),
                                dest=f.name, **kw)


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The settings ``cls`` from the parsed flags (each field that the namespace holds)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})
