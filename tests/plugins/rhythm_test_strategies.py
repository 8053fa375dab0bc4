# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""A user's own strategies, shipped the way a package would: this folder is on ``PYTHONPATH`` of a test run, and
``rhythm_test_strategies-0.1.dist-info/entry_points.txt`` declares this module a ``verl.plugins`` entry point, so verl
imports it in every process of the run (launcher, TaskRunner, workers), like the plugin itself.

- ``early_anchor`` is registered at import: in every process.
- ``early_anchor_driver_only`` is registered only where verl's v1 trainer module is imported (the TaskRunner, which
  validates the config and computes γ): the actor workers never know it, and must not need to.

With ``RHYTHM_TEST_MARKERS`` set, each process leaves a file saying what it registered.
"""

import os
from pathlib import Path

from verl_rhythm.credit.registry import register_strategy
from verl_rhythm.post_import import when_imported

SUMMARY = "anchors (top-q FAI) in the first half of the response"


def early_anchors(tokens):
    """Anchors in the first half of each response's valid tokens."""
    return tokens.anchor & (tokens.position < (tokens.n_valid[:, None] + 1) // 2)


def _mark(what: str) -> None:
    folder = os.environ.get("RHYTHM_TEST_MARKERS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{what}_{os.getpid()}").touch()


def _register_in_the_driver(_module) -> None:
    register_strategy("early_anchor_driver_only", needs=("fai",), summary=SUMMARY)(early_anchors)
    _mark("driver_only")


register_strategy("early_anchor", needs=("fai",), summary=SUMMARY)(early_anchors)
_mark("imported")
when_imported("verl.trainer.ppo.v1.trainer_base", _register_in_the_driver)
