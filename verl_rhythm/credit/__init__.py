# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Credit room: per-token statistics → preplan/anchor sets → per-token γ. Pure torch, no verl import.

- :mod:`.registry`: the strategy registry (:func:`register_strategy`); :mod:`.strategies`: the built-in ones.
- :mod:`.gamma`: TopQ, ΔWAAD, the coupled rule and :func:`compute_gamma`.
- :mod:`.rhythm`: :func:`rhythm_credit`, γ under an ``algorithm.rhythm`` config (the estimator and the report).
"""

from verl_rhythm.credit.gamma import (
    Credit,
    Selection,
    Settings,
    Tokens,
    apply_gamma,
    compute_gamma,
    coupled_sets,
    top_q_mask,
    waad_delta,
)
from verl_rhythm.credit.registry import (
    Strategy,
    get_strategy,
    register_strategy,
    strategies,
    strategy_names,
    unregister_strategy,
)
from verl_rhythm.credit.rhythm import credit_metrics, rhythm_credit

__all__ = [
    "Credit",
    "Selection",
    "Settings",
    "Strategy",
    "Tokens",
    "apply_gamma",
    "compute_gamma",
    "coupled_sets",
    "credit_metrics",
    "get_strategy",
    "register_strategy",
    "rhythm_credit",
    "strategies",
    "strategy_names",
    "top_q_mask",
    "unregister_strategy",
    "waad_delta",
]
