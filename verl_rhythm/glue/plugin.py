# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Seam: verl's ``verl.plugins`` entry-point group (``verl/__init__.py``, verl 0.9.1).

``import verl`` imports this module in every process (launcher, TaskRunner actor, workers, rollout and reward
servers) unless ``VERL_USE_EXTERNAL_PLUGINS`` excludes it. It only arranges, for the moment verl imports each module
below, the registration or patch that belongs to it (:mod:`verl_rhythm.post_import`), so a process that never
trains pays for nothing (``python benchmarks/import_cost.py`` measures ``import verl`` with and without the plugin).
Every wrapper calls the stock function unchanged unless the run is a rhythm run; the full list of what the plugin
changes in a process is the table "What the plugin changes in your process" of ``docs/verl-integration.md``:

====================================================  ============================================================
verl module                                           patch
====================================================  ============================================================
``verl.trainer.ppo.core_algos``                       :mod:`verl_rhythm.glue.core_algos` (the ``rhythm`` estimator)
``verl.trainer.ppo.v1.trainer_base``                  :mod:`verl_rhythm.glue.trainer_base` (checks, fields, metrics)
``verl.trainer.ppo.ray_trainer``                      :mod:`verl_rhythm.glue.ray_trainer` (the legacy trainer)
``verl.trainer.ppo.metric_utils``                     :mod:`verl_rhythm.glue.metric_utils` (legacy step metrics)
``verl.workers.engine.fsdp.transformer_impl``         :mod:`verl_rhythm.glue.transformer_impl` (the capture)
====================================================  ============================================================

Under Ulysses sequence parallelism the engine's first capturing micro-batch also wraps one verl function
(:mod:`verl_rhythm.glue.monkey_patch`).

verl swallows plugin import errors (logged at debug level); the trainer side therefore stops a rhythm run whose
workers did not produce the capture (:class:`verl_rhythm.glue.trainer_base.RhythmCaptureMissing`). Importing this
module twice is a no-op.
"""

from __future__ import annotations

import importlib

from verl_rhythm.post_import import when_imported

PATCHES = {
    "verl.trainer.ppo.core_algos": "verl_rhythm.glue.core_algos",
    "verl.trainer.ppo.v1.trainer_base": "verl_rhythm.glue.trainer_base",
    "verl.trainer.ppo.ray_trainer": "verl_rhythm.glue.ray_trainer",
    "verl.trainer.ppo.metric_utils": "verl_rhythm.glue.metric_utils",
    "verl.workers.engine.fsdp.transformer_impl": "verl_rhythm.glue.transformer_impl",
}
"""verl module → glue module imported right after it; its ``install(verl_module)``, if any, patches it."""

_registered = False


def _installer(glue_module: str):
    def install(verl_module) -> None:
        glue = importlib.import_module(glue_module)
        if hasattr(glue, "install"):  # core_algos registers at import (@register_adv_est)
            glue.install(verl_module)

    install.__qualname__ = f"install[{glue_module}]"
    return install


def register() -> None:
    """Arrange every patch of :data:`PATCHES` (at once for verl modules already imported); idempotent."""
    global _registered
    if _registered:
        return
    _registered = True
    for verl_module, glue_module in PATCHES.items():
        when_imported(verl_module, _installer(glue_module))


def is_loaded() -> bool:
    """Whether the ``rhythm`` estimator is registered in this process's verl registry."""
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    from verl_rhythm.glue import core_algos
    from verl_rhythm.glue.checks import ESTIMATOR_NAME

    return ADV_ESTIMATOR_REGISTRY.get(ESTIMATOR_NAME) is core_algos.compute_rhythm_outcome_advantage


def is_patched() -> dict[str, bool]:
    """For each verl module of :data:`PATCHES` already imported in this process, whether its patch is in place."""
    import sys

    from verl_rhythm.wrapping import is_wrapped

    out = {}
    if "verl.trainer.ppo.core_algos" in sys.modules:
        out["verl.trainer.ppo.core_algos"] = is_loaded()
    trainer = sys.modules.get("verl.trainer.ppo.v1.trainer_base")
    if trainer is not None:
        from verl_rhythm.glue.trainer_base import WRAPPED

        out["verl.trainer.ppo.v1.trainer_base"] = all(is_wrapped(getattr(trainer.PPOTrainer, n)) for n in WRAPPED)
    ray_trainer = sys.modules.get("verl.trainer.ppo.ray_trainer")
    if ray_trainer is not None:
        from verl_rhythm.glue.ray_trainer import METHODS

        wrapped = [getattr(ray_trainer.RayPPOTrainer, n) for n in METHODS] + [ray_trainer.compute_advantage]
        out["verl.trainer.ppo.ray_trainer"] = all(is_wrapped(f) for f in wrapped)
    metric_utils = sys.modules.get("verl.trainer.ppo.metric_utils")
    if metric_utils is not None:
        out["verl.trainer.ppo.metric_utils"] = is_wrapped(metric_utils.compute_data_metrics)
    engine = sys.modules.get("verl.workers.engine.fsdp.transformer_impl")
    if engine is not None:
        from verl_rhythm.glue import transformer_impl

        out["verl.workers.engine.fsdp.transformer_impl"] = transformer_impl.is_installed(engine)
    return out


register()
