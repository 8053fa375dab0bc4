# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""verl-rhythm's hydra recipes, shipped as the ``verl_rhythm.recipes`` package (``setup.py`` maps it here).

Use them with ``python -m verl.trainer.main_ppo --config-path pkg://verl_rhythm.recipes --config-name <name>`` when
verl-rhythm is installed, or ``--config-path "$(pwd)/recipes"`` from a checkout (hydra resolves a relative
``--config-path`` against ``verl/trainer/``, not the working directory). See ``docs/rhythm.md``.
"""
