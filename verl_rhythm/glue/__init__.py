# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""verl glue room: thin modules, each named after the verl 0.9.1 seam it plugs into.

- :mod:`.plugin`: the ``verl.plugins`` entry point (``verl/__init__.py``); defers the patches below with
  :mod:`verl_rhythm.post_import` until verl imports the patched modules.
- :mod:`.core_algos`: the ``rhythm`` estimator (``verl/trainer/ppo/core_algos.py:register_adv_est``).
- :mod:`.trainer_base`: ``verl/trainer/ppo/v1/trainer_base.py:PPOTrainer`` (start-up checks, capture switch,
  statistics to the estimator, ``rhythm/*`` metrics).
- :mod:`.transformer_impl`: ``verl/workers/engine/fsdp/transformer_impl.py:FSDPEngineWithLMHead.forward_step``
  (the capture in the actor's old-log-prob forward, for every engine of the FSDP family).
- :mod:`.monkey_patch`: ``verl/models/transformers/monkey_patch.py`` (the capture under Ulysses).
- :mod:`.ray_trainer`: ``verl/trainer/ppo/ray_trainer.py:RayPPOTrainer`` and ``compute_advantage`` (the legacy
  trainer and recipe trainers: checks, statistics in the ``DataProto``, hand-off); :mod:`.metric_utils`:
  ``verl/trainer/ppo/metric_utils.py:compute_data_metrics`` (their ``rhythm/*`` step metrics).
- :mod:`.statistics`: what every trainer shares (capture switch, response-layout statistics, hand-off, metrics).
- :mod:`.padding`: ``verl/workers/utils/padding.py`` (response layout without the log-prob shift).
- :mod:`.checks`: the fail-fast start-up checks; :mod:`.tq_fields`: the field names; :mod:`.contract`: the pinned
  verl internals.
- :mod:`.seams`: each seam's check before it is wrapped; a seam a later verl moved is left as verl's own and disables
  rhythm runs alone, with one line naming verl's version and the function.
"""
