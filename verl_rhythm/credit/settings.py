# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The credit's ``algorithm.rhythm.*`` settings: which tokens a strategy amplifies, and by how much.

Read where γ is computed (the trainer's estimator, ``verl-rhythm analyze``), never in the actor workers; the strategy
name is checked against the registry (:mod:`verl_rhythm.credit.registry`) of the process that builds the settings.
No torch or verl import.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from verl_rhythm.credit.registry import get_strategy, strategy_names
from verl_rhythm.keys import choice, document, ints, knob, kwargs_from_mapping, number

SIGN_MODES = ("both", "positive", "negative")
BOTTOM_SCORES = ("local", "global")
GAMMA_AMP_MAX = 100.0
"""Largest ``gamma_amp``. With ``intro_window`` <= :data:`INTRO_WINDOW_MAX` a token's γ is at most
``1 + (gamma_amp - 1) * (1 + alpha * intro_window)`` (an anchor that also introduces up to k dominated anchors),
about 1e5: advantages stay finite in fp32 and bf16 (max ~3.4e38) for any reward a scorer returns."""
INTRO_WINDOW_MAX = 1024
"""Largest coupled look-back k; the rule keeps a ``(B, T + k)`` window tensor."""
SEED_MAX = (1 << 63) - 1
"""Largest seed: ``torch.Generator.manual_seed`` takes seeds below 2**64, and training step i draws from
``seed + i``."""


@document
@dataclasses.dataclass(frozen=True)
class CreditSettings:
    """Validated credit settings; field names are their ``algorithm.rhythm.<field>`` keys."""

    strategy: str = knob("coupled", "which tokens get amplified; a registered strategy (verl_rhythm.credit.registry)")
    sign: str = knob("both", "which advantages γ scales: both (v2 default), positive (A > 0, v1) or negative (A < 0)")
    top_q: float = knob(0.4, "the share q of a response's valid tokens selected by TopQ (k = ceil(q * n_valid))")
    gamma_amp: float = knob(1.5, "the amplification γ_amp given to a selected token (γ = 1 elsewhere)")
    alpha: float = knob(0.5, "coupled rule: share of a dominated anchor's bonus moved to its introductory token")
    intro_window: int = knob(
        3, "coupled rule: k, the look-back window [t-k, t-1] for a dominated anchor's preplan token"
    )
    bottom_score: str = knob(
        "global", "the bottom control ranks the bottom q of this strategy's score (local: ΔWAAD, global: FAI)"
    )
    seed: int = knob(0, "seed of random draws (the random control): training step i draws from seed + i")

    def __post_init__(self):
        choice("strategy", self.strategy, strategy_names())
        choice("sign", self.sign, SIGN_MODES)
        choice("bottom_score", self.bottom_score, BOTTOM_SCORES)
        number("top_q", self.top_q, float, lo=0.0, hi=1.0, lo_open=True, allowed="(0, 1]")
        number("gamma_amp", self.gamma_amp, float, lo=1.0, hi=GAMMA_AMP_MAX, allowed=f"[1, {GAMMA_AMP_MAX:g}]")
        number("alpha", self.alpha, float, lo=0.0, hi=1.0, allowed="[0, 1]")
        number("intro_window", self.intro_window, int, lo=1, hi=INTRO_WINDOW_MAX, allowed=ints(1, INTRO_WINDOW_MAX))
        number("seed", self.seed, int, lo=0, hi=SEED_MAX, allowed="integer in [0, 2**63 - 1]")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> CreditSettings:
        """From a mapping of credit keys (``None``: defaults). Raises :class:`~verl_rhythm.keys.RhythmConfigError`."""
        return cls(**kwargs_from_mapping(values, [f.name for f in dataclasses.fields(cls)]))

    @property
    def strategy_spec(self):
        """The registered :class:`verl_rhythm.credit.registry.Strategy` of :attr:`strategy`."""
        return get_strategy(self.strategy)

    @property
    def needs(self) -> tuple[str, ...]:
        """The statistics this strategy ranks by (``waad``, ``fai``, ``entropy``), from its registration."""
        return self.strategy_spec.needs_for(self)

    @property
    def needs_attention(self) -> bool:
        """Whether this strategy reads WAAD/FAI, i.e. whether the old-log-prob pass must capture attention."""
        return self.strategy_spec.needs_attention(self)

    @property
    def needs_entropy(self) -> bool:
        """Whether this strategy reads the per-token entropy of the old-log-prob pass."""
        return self.strategy_spec.needs_entropy(self)
