# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""``verl-rhythm analyze``: which tokens a model's own attention marks as preplan and anchor tokens, and what γ
each strategy would give them, before any GPU hour is spent.

One code path with training: generation, then one forward through the trainer's capture
(:mod:`verl_rhythm.measure.capture` + :mod:`verl_rhythm.measure.hook`) and the estimator's credit function
(:func:`verl_rhythm.credit.rhythm_credit`). Entry point: :func:`run_analyze`.
"""

from verl_rhythm.analyze.pipeline import AnalyzeSettings, run_analyze

__all__ = ["AnalyzeSettings", "run_analyze"]
