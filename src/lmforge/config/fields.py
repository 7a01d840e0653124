"""Checked dataclasses: every field's type and range is verified when a config is built, so a wrong value is one
line naming the field and the fix."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import fields
from typing import Any

from lmforge.errors import LmforgeError


def _check_field(owner: str, name: str, kind: Any, value: Any) -> Any:
    """Returns value converted to the field's type (an int is a valid float), or raises naming the field."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) is typing.Literal:
        if value not in args:
            raise LmforgeError(f"{owner}.{name} must be one of {', '.join(map(str, args))}, not {value!r}")
        return value
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        if value is None and type(None) in args:
            return None
        return _check_field(owner, name, next(a for a in args if a is not type(None)), value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise LmforgeError(f"{owner}.{name} must be {kind.__name__}, not {type(value).__name__} ({value!r})")
    if kind is float and not math.isfinite(value):
        raise LmforgeError(f"{owner}.{name} must be a finite number, not {value!r}")
    return value


class Checked:
    """Mixin: types are checked after __init__, then each class's `_ranges` (name -> (test, hint)) are applied."""

    _ranges: dict[str, tuple[Any, str]] = {}

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        owner = getattr(self, "section", type(self).__name__)
        for f in fields(self):
            if f.name in hints and not dataclasses.is_dataclass(hints[f.name]):
                setattr(self, f.name, _check_field(owner, f.name, hints[f.name], getattr(self, f.name)))
        for name, (test, hint) in self._ranges.items():
            if not test(getattr(self, name)):
                raise LmforgeError(f"{owner}.{name} = {getattr(self, name)!r} is out of range: {hint}")
        self.check()

    def check(self) -> None:
        """Cross-field rules of a family; the default has none."""


def merge_precision(cfg) -> None:
    """`precision` is another name for a training section's `dtype` (the one lmforge estimate uses): given, it sets
    dtype; the two naming different precisions is a mistake."""
    if cfg.precision is None:
        return
    if cfg.dtype not in ("auto", cfg.precision):
        raise LmforgeError(
            f"{cfg.section}.precision = {cfg.precision} and {cfg.section}.dtype = {cfg.dtype} disagree: give one"
        )
    cfg.dtype, cfg.precision = cfg.precision, None


def _positive(x):
    return x > 0


def _fraction(x):
    return 0.0 <= x < 1.0
