# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Seam: ``verl/trainer/ppo/metric_utils.py:compute_data_metrics`` (verl 0.9.1), the step metrics of a ``DataProto``.

The legacy ``RayPPOTrainer.fit`` and the recipe trainers built on it collect a step's metrics in a local dict; the
only call they all make with the step's final batch is ``metrics.update(compute_data_metrics(batch=batch, ...))``.
The wrapper returns the stock metrics plus the ``rhythm/*`` metrics the advantage step left in
``batch.meta_info`` (:data:`METRICS_KEY`, written by :mod:`verl_rhythm.glue.ray_trainer`); for any other batch
(every non-rhythm run, and the v1 trainer, whose wrappers add their metrics directly) it returns exactly the stock
result.

Modules bind the function by name at import (``ray_trainer`` with ``from ... import compute_data_metrics``, and so do
recipe trainers), so it is wrapped when ``metric_utils`` finishes importing, before any of them can bind it;
:func:`rebind` covers a module imported earlier.
"""

from __future__ import annotations

import functools
from typing import Any

from verl_rhythm.wrapping import is_wrapped, mark

METRICS_KEY = "rhythm_metrics"
"""``DataProto.meta_info`` key under which the legacy trainer's advantage step leaves the ``rhythm/*`` metrics."""


def step_metrics(batch: Any) -> dict[str, float]:
    """The ``rhythm/*`` metrics the advantage step left in ``batch.meta_info`` (empty for other runs)."""
    meta = getattr(batch, "meta_info", None) or {}
    return dict(meta.get(METRICS_KEY) or {})


def install(module) -> None:
    """Wrap ``module.compute_data_metrics``; idempotent."""
    stock = module.compute_data_metrics
    if is_wrapped(stock):
        return

    @functools.wraps(stock)
    def compute_data_metrics(batch, *args, **kwargs):
        metrics = stock(batch, *args, **kwargs)
        extra = step_metrics(batch)
        return {**metrics, **extra} if extra else metrics

    module.compute_data_metrics = mark(compute_data_metrics, stock)


def rebind(module) -> None:
    """Point ``module.compute_data_metrics`` at the wrapper if it still holds the stock function."""
    import verl.trainer.ppo.metric_utils as metric_utils

    install(metric_utils)
    if not is_wrapped(getattr(module, "compute_data_metrics", None)):
        module.compute_data_metrics = metric_utils.compute_data_metrics
