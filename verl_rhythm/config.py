# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""``algorithm.rhythm.*``: the whole block, validated in the driver; each consumer keeps its own part.

The keys are flat (``algorithm.rhythm.top_q``, ``algorithm.rhythm.waad_window``); each belongs to one consumer:

- :class:`~verl_rhythm.measure.settings.CaptureSettings` (``measure/``): what the actor workers need to measure
  WAAD and FAI. It is all the trainer sends them, so a custom strategy registered only in the driver works.
- :class:`~verl_rhythm.credit.settings.CreditSettings` (``credit/``): the strategy and its knobs, read where γ is
  computed.

:class:`RhythmConfig` composes the two: :meth:`RhythmConfig.from_dict` is the single entry point for the block (a
plain mapping or an OmegaConf ``DictConfig``), rejects unknown keys and out-of-range values with an error that names
the key, and fills in the defaults of ``docs/method.md`` (arXiv 2510.13554 v2), each written once, in its
consumer's class. No torch or verl import at module level.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from verl_rhythm.credit.settings import (  # noqa: F401  (re-exported: the block's bounds in one namespace)
    BOTTOM_SCORES,
    GAMMA_AMP_MAX,
    INTRO_WINDOW_MAX,
    SEED_MAX,
    SIGN_MODES,
    CreditSettings,
)
from verl_rhythm.keys import RhythmConfigError, kwargs_from_mapping
from verl_rhythm.measure.settings import (  # noqa: F401  (re-exported)
    GROUP_SCOPES,
    POSITION_MAX,
    SOFTMAX_LAYER_TYPES,
    CaptureSettings,
    select_layers,
)

__all__ = ["CaptureSettings", "CreditSettings", "RhythmConfig", "RhythmConfigError", "select_layers"]

PARTS = {"credit": CreditSettings, "capture": CaptureSettings}
"""Attribute of :class:`RhythmConfig` → the settings class it holds."""
KEYS = {f.name: part for part, cls in PARTS.items() for f in dataclasses.fields(cls)}
"""``algorithm.rhythm`` key → the part (``capture`` or ``credit``) it belongs to."""


def __getattr__(name: str):
    """``STRATEGIES`` and ``ATTENTION_STRATEGIES``: views of the strategy registry, read when first asked for."""
    if name in ("STRATEGIES", "ATTENTION_STRATEGIES"):
        from verl_rhythm.credit.registry import strategies

        known = strategies()
        if name == "STRATEGIES":
            return tuple(known)
        return tuple(n for n, s in known.items() if s.needs_attention(CreditSettings(strategy=n)))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class RhythmConfig:
    """The validated ``algorithm.rhythm`` block: :attr:`capture` and :attr:`credit`.

    ``RhythmConfig(top_q=0.3, waad_window=8)`` takes the flat keys; each key is also an attribute
    (``cfg.top_q``), read from the part that owns it. Immutable, hashable, compared by value.

    Attributes:
        capture: the :class:`CaptureSettings` (sent to the actor workers).
        credit: the :class:`CreditSettings` (strategy and knobs).
    """

    __slots__ = ("capture", "credit")

    def __init__(self, **keys: Any):
        unknown = sorted(set(keys) - set(KEYS))
        if unknown:
            raise RhythmConfigError(
                f"unknown key algorithm.rhythm.{unknown[0]}; known keys: {', '.join(sorted(KEYS))}", unknown[0]
            )
        for part, cls in PARTS.items():
            object.__setattr__(self, part, cls(**{k: v for k, v in keys.items() if KEYS[k] == part}))

    def __getattr__(self, name: str) -> Any:
        part = KEYS.get(name)
        if part is None:
            raise AttributeError(f"RhythmConfig has no attribute {name!r} (keys: {', '.join(sorted(KEYS))})")
        return getattr(object.__getattribute__(self, part), name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RhythmConfig) and (self.capture, self.credit) == (other.capture, other.credit)

    def __hash__(self) -> int:
        return hash((self.capture, self.credit))

    def __repr__(self) -> str:
        return f"RhythmConfig({', '.join(f'{k}={getattr(self, k)!r}' for k in KEYS)})"

    def __reduce__(self):
        return (_rebuild, (self.to_dict(),))

    def replace(self, **keys: Any) -> RhythmConfig:
        """A copy with ``keys`` changed (validated again)."""
        return RhythmConfig(**{**self.to_dict(), **keys})

    @property
    def needs_attention(self) -> bool:
        """Whether this strategy reads WAAD/FAI, i.e. whether the old-log-prob pass must capture attention."""
        return self.credit.needs_attention

    @property
    def needs_entropy(self) -> bool:
        """Whether this strategy reads the per-token entropy of the old-log-prob pass."""
        return self.credit.needs_entropy

    @property
    def needs(self) -> tuple[str, ...]:
        """The statistics this strategy ranks by (``waad``, ``fai``, ``entropy``), from its registration."""
        return self.credit.needs

    @property
    def strategy_spec(self):
        """The registered :class:`verl_rhythm.credit.registry.Strategy` of the strategy."""
        return self.credit.strategy_spec

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> RhythmConfig:
        """Build from the ``algorithm.rhythm`` mapping (``None`` or empty = all defaults).

        Raises:
            RhythmConfigError: on an unknown key (with the list of known keys) or a value out of range.
        """
        return cls(**kwargs_from_mapping(values, list(KEYS)))

    @classmethod
    def from_algorithm_config(cls, algorithm_config: Any) -> RhythmConfig:
        """Read ``rhythm`` from verl's ``algorithm`` config (DictConfig, dict or dataclass); absent = defaults."""
        if algorithm_config is None:
            return cls()
        if hasattr(algorithm_config, "get"):
            return cls.from_dict(algorithm_config.get("rhythm", None))
        return cls.from_dict(getattr(algorithm_config, "rhythm", None))

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form of every key (lists, not tuples), e.g. for YAML or ``summary.json``."""
        return {**dataclasses.asdict(self.credit), **self.capture.to_dict()}

    @staticmethod
    def fields() -> list[dataclasses.Field]:
        """Every key's field (name, default, ``help`` metadata), credit keys first."""
        return [*dataclasses.fields(CreditSettings), *dataclasses.fields(CaptureSettings)]


def _rebuild(values: dict[str, Any]) -> RhythmConfig:
    return RhythmConfig(**values)
