# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""What every group of ``algorithm.rhythm.*`` settings shares: the error that names a key, and the checks.

The settings live with their consumers (:class:`verl_rhythm.measure.settings.CaptureSettings`,
:class:`verl_rhythm.credit.settings.CreditSettings`); :class:`verl_rhythm.config.RhythmConfig` composes them. This
module sits below all three and imports neither torch nor verl.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

PREFIX = "algorithm.rhythm"


class RhythmConfigError(ValueError):
    """A bad ``algorithm.rhythm.*`` key or value. The message always names the full key.

    Attributes:
        key: the ``algorithm.rhythm`` key at fault (``"top_q"``), or ``None`` for the block as a whole or for a
            problem of the model rather than of one key.
    """

    def __init__(self, message: str, key: str | None):
        super().__init__(message)
        self.key = key


def knob(default: Any, help: str) -> Any:
    """A settings field with its default and its one-line ``help`` (metadata)."""
    return dataclasses.field(default=default, metadata={"help": help})


def document(cls: type) -> type:
    """Append an ``Attributes`` section built from the fields' ``help`` to ``cls.__doc__``; returns ``cls``."""
    if cls.__doc__:  # None under python -OO
        cls.__doc__ += "\n    Attributes:\n" + "".join(
            f"        {f.name}: {f.metadata['help']}.\n" for f in dataclasses.fields(cls)
        )
    return cls


def kwargs_from_mapping(values: Mapping[str, Any] | None, known: list[str]) -> dict[str, Any]:
    """The keyword arguments of a settings class from an ``algorithm.rhythm`` mapping (``None``: none).

    Accepts a plain mapping or an OmegaConf ``DictConfig`` (anything with ``items()``); a sequence value (list,
    ``ListConfig``) becomes a tuple.

    Raises:
        RhythmConfigError: not a mapping, or a key outside ``known`` (with the list of known keys).
    """
    if values is None:
        return {}
    if not hasattr(values, "items"):
        raise RhythmConfigError(f"{PREFIX} must be a mapping of keys to values, got {type(values).__name__}", None)
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise RhythmConfigError(f"unknown key {PREFIX}.{key}; known keys: {', '.join(sorted(known))}", str(key))
        if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)) and not hasattr(value, "items"):
            value = tuple(value)  # a list or an OmegaConf ListConfig
        kwargs[key] = value
    return kwargs


def is_int(x: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(x, int) and not isinstance(x, bool)


def choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Raise unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise RhythmConfigError(f"{PREFIX}.{key}={show(value)}: allowed values are {', '.join(allowed)}", key)


def ints(lo, hi) -> str:
    """How an integer range reads in a message."""
    return f"integer in [{lo}, {hi}]"


def number(key: str, value: Any, kind: type, lo=None, hi=None, lo_open: bool = False, allowed: str = "") -> None:
    """Raise unless ``value`` is a finite ``kind`` (int or float, never bool) in ``[lo, hi]`` (``(lo, hi]``)."""
    ok_type = is_int(value) if kind is int else (isinstance(value, (int, float)) and not isinstance(value, bool))
    if ok_type and kind is float:
        try:
            ok_type = math.isfinite(float(value))
        except OverflowError:  # an int beyond the float range
            ok_type = False
    if not ok_type:
        raise RhythmConfigError(f"{PREFIX}.{key}={show(value)}: expected {allowed}", key)
    if (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi):
        raise RhythmConfigError(f"{PREFIX}.{key}={show(value)}: allowed range is {allowed}", key)


def show(value: Any) -> str:
    """``repr`` for an error message, short for a huge integer (whose repr may even be refused)."""
    if is_int(value) and abs(value) >= 10**30:
        return f"{'-' if value < 0 else ''}<integer of about 10**{int(abs(value).bit_length() * 0.30103)}>"
    if isinstance(value, (list, tuple)):
        text = "[" + ", ".join(show(v) for v in value[:8]) + (", ...]" if len(value) > 8 else "]")
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
