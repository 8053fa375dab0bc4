"""Seam: verl's ``verl.plugins`` entry-point group (``verl/__init__.py``, verl 0.9.1).

``import verl`` imports this module in every process (launcher, TaskRunner actor, workers) unless
``VERL_USE_EXTERNAL_PLUGINS=none``. verl swallows plugin import errors (logged at debug level), so the trainer side
checks :func:`is_loaded` and fails loudly where it matters. Importing this module twice is a no-op.
"""

from __future__ import annotations

from verl_rhythm.glue import core_algos as _core_algos  # noqa: F401  (registers the "rhythm" estimator)


def is_loaded() -> bool:
    """Whether the ``rhythm`` estimator is registered in this process's verl registry."""
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    return ADV_ESTIMATOR_REGISTRY.get(_core_algos.ESTIMATOR_NAME) is _core_algos.compute_rhythm_outcome_advantage
