# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Seam: verl's ``verl.plugins`` entry-point group (``verl/__init__.py``, verl 0.9.1).

``import verl`` imports this module in every process (launcher, TaskRunner actor, workers, rollout and reward
servers) unless ``VERL_USE_EXTERNAL_PLUGINS`` excludes it. It only arranges, for the moment verl imports each module
below, the registration or patch that belongs to it (:mod:`verl_rhythm.post_import`), so a process that never
trains pays for nothing (``python benchmarks/import_cost.py`` measures ``import verl`` with and without the plugin):

====================================================  ============================================================
verl module                                           patch
====================================================  ============================================================
``verl.trainer.ppo.core_algos``                       :mod:`verl_rhythm.glue.core_algos` (the ``rhythm`` estimator)
``verl.trainer.ppo.v1.trainer_base``                  :mod:`verl_rhythm.glue.trainer_base` (checks, fields, metrics)
``verl.trainer.ppo.ray_trainer``                      :mod:`verl_rhythm.glue.ray_trainer` (refuses the v0 trainer)
``verl.workers.engine.fsdp.transformer_impl``         :mod:`verl_rhythm.glue.fsdp_engine` (the capturing engine)
``verl.models.transformers.monkey_patch``             :mod:`verl_rhythm.glue.monkey_patch` (capture under Ulysses)
====================================================  ============================================================

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
    "verl.workers.engine.fsdp.transformer_impl": "verl_rhythm.glue.fsdp_engine",
    "verl.models.transformers.monkey_patch": "verl_rhythm.glue.monkey_patch",
}
"""verl module → glue module imported right after it; its ``install(verl_module)``, if any, patches it."""

_registered = False


def _installer(glue_module: str):
    def install(verl_module) -> None:
        glue = importlib.import_module(glue_module)
        if not hasattr(glue, "install"):
            # registering at import (core_algos' @register_adv_est), or the glue module is itself importing this verl
            # module (fsdp_engine imports the engine it subclasses): half initialised here, it installs at its end
            return
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
        out["verl.trainer.ppo.ray_trainer"] = is_wrapped(ray_trainer.RayPPOTrainer.__init__)
    monkey_patch = sys.modules.get("verl.models.transformers.monkey_patch")
    if monkey_patch is not None:
        from verl_rhythm.glue import monkey_patch as glue_monkey_patch

        out["verl.models.transformers.monkey_patch"] = glue_monkey_patch.is_installed(monkey_patch)
    if "verl.workers.engine.fsdp.transformer_impl" in sys.modules:
        from verl_rhythm.glue.fsdp_engine import REGISTRY_KEYS, is_registered

        out["verl.workers.engine.fsdp.transformer_impl"] = all(is_registered(k) for k in REGISTRY_KEYS)
    return out


register()
