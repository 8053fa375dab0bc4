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
``verl.workers.engine.megatron.transformer_impl``     :mod:`verl_rhythm.glue.megatron_impl` (the capture on Megatron;
                                                      where megatron-core is installed)
====================================================  ============================================================

Under Ulysses sequence parallelism the engine's first capturing micro-batch also wraps one verl function
(:mod:`verl_rhythm.glue.monkey_patch`).

verl swallows plugin import errors (logged at debug level); the trainer side therefore stops a rhythm run whose
workers did not produce the capture (:class:`verl_rhythm.glue.trainer_base.RhythmCaptureMissing`). Importing this
module twice is a no-op.

A later verl that renamed or reshaped a wrapped function: each installer checks its target first and leaves a seam
that moved as verl's own, recorded and logged (:mod:`verl_rhythm.glue.seams`); no installer raises into verl's import
(a patch that fails anyway is recorded the same way, and the module's other patches still run). Every run that does
not ask for rhythm is then verl's own; a rhythm run is refused at start-up with one line naming verl's version and
the function (:func:`verl_rhythm.glue.seams.refusal`). :func:`is_patched` reports such a module as not patched.
"""

from __future__ import annotations

import importlib

from verl_rhythm.glue import seams
from verl_rhythm.post_import import when_imported

PATCHES = {
    "verl.trainer.ppo.core_algos": "verl_rhythm.glue.core_algos",
    "verl.trainer.ppo.v1.trainer_base": "verl_rhythm.glue.trainer_base",
    "verl.trainer.ppo.ray_trainer": "verl_rhythm.glue.ray_trainer",
    "verl.trainer.ppo.metric_utils": "verl_rhythm.glue.metric_utils",
    "verl.workers.engine.fsdp.transformer_impl": "verl_rhythm.glue.transformer_impl",
}
"""verl module → glue module imported right after it; its ``install(verl_module)``, if any, patches it."""

OPTIONAL_PATCHES = {
    "verl.workers.engine.megatron.transformer_impl": "verl_rhythm.glue.megatron_impl",
}
"""Like :data:`PATCHES`, for verl modules that import only where an optional stack is installed (megatron-core):
installed when verl imports them, never imported by the start-up check."""

_registered = False


def _installer(glue_module: str):
    def install(verl_module) -> None:
        glue = importlib.import_module(glue_module)
        if hasattr(glue, "install"):  # core_algos registers at import (glue.core_algos.register)
            glue.install(verl_module)

    install.__qualname__ = f"install[{glue_module}]"
    return install


def _failed(glue_module: str):
    def record(verl_module, err: Exception) -> None:
        seams.record_disabled(verl_module.__name__, f"{glue_module} failed: {type(err).__name__}: {err}")

    return record


def register() -> None:
    """Arrange every patch of :data:`PATCHES` (at once for verl modules already imported); idempotent."""
    global _registered
    if _registered:
        return
    _registered = True
    for verl_module, glue_module in {**PATCHES, **OPTIONAL_PATCHES}.items():
        when_imported(verl_module, _installer(glue_module), on_error=_failed(glue_module))


def is_loaded() -> bool:
    """Whether the ``rhythm`` estimator is registered in this process's verl registry."""
    from verl.trainer.ppo import core_algos as verl_algos

    from verl_rhythm.glue import core_algos
    from verl_rhythm.glue.checks import ESTIMATOR_NAME

    registry = getattr(verl_algos, "ADV_ESTIMATOR_REGISTRY", None) or {}
    return registry.get(ESTIMATOR_NAME) is core_algos.compute_rhythm_outcome_advantage


def is_patched() -> dict[str, bool]:
    """For each verl module of :data:`PATCHES` already imported in this process, whether its patch is in place.

    ``False`` for a module where a seam moved (:func:`verl_rhythm.glue.seams.disabled` says which and why): the glue
    left that verl object as it is, and rhythm runs are refused.
    """
    import sys

    from verl_rhythm.wrapping import is_wrapped

    disabled = seams.disabled()
    out = {}
    if "verl.trainer.ppo.core_algos" in sys.modules:
        out["verl.trainer.ppo.core_algos"] = is_loaded()
    trainer = sys.modules.get("verl.trainer.ppo.v1.trainer_base")
    if trainer is not None:
        from verl_rhythm.glue.trainer_base import WRAPPED

        cls = getattr(trainer, "PPOTrainer", None)
        out["verl.trainer.ppo.v1.trainer_base"] = all(is_wrapped(getattr(cls, n, None)) for n in WRAPPED)
    ray_trainer = sys.modules.get("verl.trainer.ppo.ray_trainer")
    if ray_trainer is not None:
        from verl_rhythm.glue.ray_trainer import METHODS

        cls = getattr(ray_trainer, "RayPPOTrainer", None)
        wrapped = [getattr(cls, n, None) for n in METHODS] + [getattr(ray_trainer, "compute_advantage", None)]
        out["verl.trainer.ppo.ray_trainer"] = all(is_wrapped(f) for f in wrapped)
    metric_utils = sys.modules.get("verl.trainer.ppo.metric_utils")
    if metric_utils is not None:
        out["verl.trainer.ppo.metric_utils"] = is_wrapped(getattr(metric_utils, "compute_data_metrics", None))
    engine = sys.modules.get("verl.workers.engine.fsdp.transformer_impl")
    if engine is not None:
        from verl_rhythm.glue import transformer_impl

        out["verl.workers.engine.fsdp.transformer_impl"] = transformer_impl.is_installed(engine)
    megatron = sys.modules.get("verl.workers.engine.megatron.transformer_impl")
    if megatron is not None:
        from verl_rhythm.glue import megatron_impl

        out["verl.workers.engine.megatron.transformer_impl"] = megatron_impl.is_installed(megatron)
    for name in out:
        if any(seam == name or seam.startswith(name + ".") for seam in disabled):
            out[name] = False
    return out


register()
