# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The strategy registry: one declaration per strategy says which statistics it needs and how it selects tokens.

Everything that depends on the set of strategies reads it from here: validation
(:class:`verl_rhythm.credit.settings.CreditSettings`), the estimator's missing-statistics check and the trainer's
fetch list (:mod:`verl_rhythm.glue`), the ``verl-rhythm analyze`` flag choices and report (:mod:`verl_rhythm.cli`,
:mod:`verl_rhythm.analyze.roles`) and the strategy table of ``docs/rhythm.md`` (checked by a test). A new
strategy is one decorated function in a module that the process reading the config imports first (verl's
TaskRunner, which validates the config and computes γ; the actor workers receive only the capture settings and never
read a strategy). For a real run, declare the module as your own package's ``verl.plugins`` entry point, which verl
imports in every process (``docs/rhythm.md``, "Custom strategies")::

    @register_strategy("late", needs=("fai",), summary="anchors in the second half of the response")
    def late(tokens):  # tokens: a Tokens (compacted rows; verl_rhythm.credit.gamma)
        return tokens.anchor & (tokens.position >= tokens.n_valid[:, None] // 2)

This module imports nothing heavy; the built-in strategies (:mod:`verl_rhythm.credit.builtin`, torch) are
loaded the first time the registry is read.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

STATISTICS = ("waad", "fai", "entropy")
"""Per-token statistics a strategy may rank by: WAAD and FAI from the attention capture, entropy from verl's
old-log-prob pass."""
ATTENTION_STATISTICS = ("waad", "fai")
"""The statistics the attention capture produces (always both, whichever one a strategy needs)."""
KINDS = ("paper", "control", "baseline")
"""``paper``: one of the paper's three strategies (Sec. 4); ``control``: one of its controls; ``baseline``: plain
GRPO through the same code."""

_BUILTINS = "verl_rhythm.credit.builtin"


@dataclasses.dataclass(frozen=True)
class Strategy:
    """One registered strategy.

    Attributes:
        name: the ``algorithm.rhythm.strategy`` value.
        select: ``select(tokens) -> selected`` with ``tokens`` a :class:`verl_rhythm.credit.gamma.Tokens` and
            ``selected`` a ``(B, T)`` bool tensor on the compacted rows (γ = γ_amp there, 1 elsewhere), or a
            :class:`verl_rhythm.credit.gamma.Selection` when the strategy shapes γ itself (``coupled``).
        needs: the statistics it ranks by (a subset of :data:`STATISTICS`), or a function of the settings (anything
            with the ``algorithm.rhythm`` attributes) returning them, for a strategy whose knob picks the statistic.
        summary: one line for the docs table and ``--help``.
        kind: one of :data:`KINDS`.
    """

    name: str
    select: Callable[[Any], Any]
    needs: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = ()
    summary: str = ""
    kind: str = "control"

    def needs_for(self, settings: Any = None) -> tuple[str, ...]:
        """The statistics this strategy needs under ``settings`` (``CreditSettings`` or the like)."""
        needs = self.needs(settings) if callable(self.needs) else self.needs
        return _check_needs(self.name, needs)

    def needs_attention(self, settings: Any = None) -> bool:
        """Whether the old-log-prob pass must capture attention for this strategy."""
        return any(s in ATTENTION_STATISTICS for s in self.needs_for(settings))

    def needs_entropy(self, settings: Any = None) -> bool:
        """Whether this strategy reads verl's per-token entropy of the old-log-prob pass."""
        return "entropy" in self.needs_for(settings)


_REGISTRY: dict[str, Strategy] = {}


def register_strategy(
    name: str,
    needs: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = (),
    *,
    summary: str = "",
    kind: str = "control",
    replace: bool = False,
) -> Callable:
    """Decorator: register ``select`` as strategy ``name`` (see :class:`Strategy` for the arguments).

    Raises:
        ValueError: ``name`` is taken (unless ``replace``), or ``needs``/``kind`` name something unknown.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"strategy name {name!r} must be an identifier")
    if kind not in KINDS:
        raise ValueError(f"strategy {name!r}: kind={kind!r}, allowed: {', '.join(KINDS)}")
    if not callable(needs):
        needs = _check_needs(name, tuple(needs))

    def decorator(select: Callable) -> Callable:
        if name in _REGISTRY and not replace:
            raise ValueError(f"strategy {name!r} is already registered (by {_REGISTRY[name].select.__module__})")
        _REGISTRY[name] = Strategy(name=name, select=select, needs=needs, summary=summary, kind=kind)
        return select

    return decorator


def unregister_strategy(name: str) -> None:
    """Remove strategy ``name`` (a test's own strategy); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def strategies() -> dict[str, Strategy]:
    """Every registered strategy by name, in registration order (built-ins first)."""
    importlib.import_module(_BUILTINS)
    return dict(_REGISTRY)


def strategy_names() -> tuple[str, ...]:
    """The allowed values of ``algorithm.rhythm.strategy``."""
    return tuple(strategies())


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name``.

    Raises:
        ValueError: no such strategy (the message lists the registered ones).
    """
    known = strategies()
    if name not in known:
        raise ValueError(f"algorithm.rhythm.strategy={name!r}: unknown strategy; registered: {', '.join(known)}")
    return known[name]


def _check_needs(name: str, needs: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [s for s in needs if s not in STATISTICS]
    if unknown:
        raise ValueError(f"strategy {name!r} needs unknown statistics {unknown}; known: {', '.join(STATISTICS)}")
    return tuple(needs)
