# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Seam: ``verl/trainer/ppo/ray_trainer.py:RayPPOTrainer`` (verl 0.9.1), the legacy v0 trainer.

The v0 trainer (``trainer.use_v1=false``, ``main_ppo_v0``) calls an estimator with four fixed fields from a
driver-side ``DataProto`` and has no TransferQueue step this plugin can extend, so a rhythm run is refused when the
trainer is constructed: in the TaskRunner, before any worker or rollout starts.
"""

from __future__ import annotations

import functools

from verl_rhythm.glue.checks import RhythmSetupError, is_rhythm_run
from verl_rhythm.wrapping import is_wrapped, mark


def install(module) -> None:
    """Wrap ``module.RayPPOTrainer.__init__`` with the refusal; idempotent."""
    cls = module.RayPPOTrainer
    original = cls.__init__
    if is_wrapped(original):
        return

    @functools.wraps(original)
    def __init__(self, config, *args, **kwargs):
        if is_rhythm_run(config):
            raise RhythmSetupError(
                "trainer.use_v1=false: algorithm.adv_estimator=rhythm needs the v1 trainer (trainer.use_v1=true, the "
                "verl 0.9 default); the legacy RayPPOTrainer passes an estimator only four fixed fields"
            )
        return original(self, config, *args, **kwargs)

    cls.__init__ = mark(__init__, original)
