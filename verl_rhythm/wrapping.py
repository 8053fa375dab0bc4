# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The one mark every wrapper of a verl function carries: the stock function it wraps, reachable and recognisable.

Used by every wrapper of the package (the glue, the CPU backend's patches, the test harnesses) and by the
pinned-source check (:mod:`verl_rhythm.glue.contract`), so a patch is applied once however often its installer runs,
and the stock code stays reachable.
"""

from __future__ import annotations

from collections.abc import Callable

STOCK_ATTR = "__verl_rhythm_stock__"
"""Attribute of a wrapper holding the stock function it wraps."""


def mark(wrapper: Callable, original: Callable) -> Callable:
    """Record ``original`` on ``wrapper``; returns ``wrapper``."""
    setattr(wrapper, STOCK_ATTR, original)
    return wrapper


def is_wrapped(fn: object) -> bool:
    """Whether ``fn`` is a verl-rhythm wrapper."""
    return hasattr(fn, STOCK_ATTR)


def stock(fn: object) -> object:
    """The stock function ``fn`` wraps, or ``fn`` itself when it is not a wrapper."""
    return getattr(fn, STOCK_ATTR, fn)
