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

from typing import Any

from verl_rhythm.glue import seams
from verl_rhythm.wrapping import is_wrapped

METRICS_KEY = "rhythm_metrics"
"""``DataProto.meta_info`` key under which the legacy trainer's advantage step leaves the ``rhythm/*`` metrics."""


def step_metrics(batch: Any) -> dict[str, float]:
    """The ``rhythm/*`` metrics the advantage step left in ``batch.meta_info`` (empty for other runs)."""
    meta = getattr(batch, "meta_info", None) or {}
    return dict(meta.get(METRICS_KEY) or {})


def install(module) -> None:
    """Wrap ``module.compute_data_metrics``; idempotent. A function that moved stays verl's own and is recorded as
    disabled (:mod:`verl_rhythm.glue.seams`)."""
    stock = getattr(module, "compute_data_metrics", None)
    if is_wrapped(stock):
        return
    if seams.checked(f"{module.__name__}.compute_data_metrics", stock, reads=("batch",), known=("batch", "use_critic")):
        module.compute_data_metrics = seams.wrap(stock, _compute_data_metrics)


def _compute_data_metrics(call: seams.Call) -> dict:
    metrics = call.stock()
    extra = step_metrics(call["batch"])
    return {**metrics, **extra} if extra else metrics


def rebind(module) -> None:
    """Point ``module.compute_data_metrics`` at the wrapper if it still holds the stock function."""
    import verl.trainer.ppo.metric_utils as metric_utils

    install(metric_utils)
    wrapped = getattr(metric_utils, "compute_data_metrics", None)
    bound = getattr(module, "compute_data_metrics", None)
    if is_wrapped(wrapped) and bound is not None and not is_wrapped(bound):
        module.compute_data_metrics = wrapped
