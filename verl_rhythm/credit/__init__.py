# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Credit room: per-token statistics → preplan/anchor sets → per-token γ. Pure torch, no verl import.

- :mod:`.settings`: :class:`CreditSettings`, the credit's ``algorithm.rhythm.*`` keys.
- :mod:`.registry`: the strategy registry (:func:`register_strategy`); :mod:`.builtin`: the built-in strategies.
- :mod:`.gamma`: TopQ, assistant segments, ΔWAAD, the coupled rule and :func:`compute_gamma`.
- :mod:`.rhythm`: :func:`rhythm_credit`, γ under a run's credit settings (the estimator and the report).

Names are imported on first use, so ``from verl_rhythm.credit.settings import CreditSettings`` stays free of torch.
"""

from verl_rhythm.lazy import exports

__all__, __getattr__ = exports(
    __name__,
    {
        "Credit": "gamma",
        "Selection": "gamma",
        "Tokens": "gamma",
        "apply_gamma": "gamma",
        "compute_gamma": "gamma",
        "coupled_sets": "gamma",
        "gamma_for": "gamma",
        "segment_ids": "gamma",
        "top_q_mask": "gamma",
        "waad_delta": "gamma",
        "Strategy": "registry",
        "get_strategy": "registry",
        "register_strategy": "registry",
        "strategies": "registry",
        "strategy_names": "registry",
        "unregister_strategy": "registry",
        "credit_metrics": "rhythm",
        "rhythm_credit": "rhythm",
        "CreditSettings": "settings",
    },
)
