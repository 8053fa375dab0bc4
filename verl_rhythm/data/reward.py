# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The recipes' ``reward.custom_reward_function``: one scorer for every data source they train or validate on.

A recipe sets::

    reward:
      custom_reward_function:
        path: pkg://verl_rhythm.data.reward
        name: compute_score

verl 0.9.1 loads it in ``verl/trainer/ppo/reward.py:get_custom_reward_fn`` (``load_extern_object``: ``pkg://``
imports the installed module, so verl-rhythm must be installed where the reward workers run, as for the plugin) and
the reward managers (``verl/experimental/reward_loop/reward_manager/naive.py``, ``dapo.py``) call it with the
keywords ``data_source, solution_str, ground_truth, extra_info``. A custom function replaces verl's
``default_compute_score`` for every source, so this one hands every source it does not own back to verl.

Sources:
    ``countdown``: :func:`verl_rhythm.data.countdown.compute_score` (TinyZero's 1.0 / 0.1 / 0).
    ``arithmetic``: :func:`verl_rhythm.data.arithmetic.compute_score` (the CPU recipe's task; 1.0 / 0.1 / 0).
    ``images``: :func:`verl_rhythm.data.images.compute_score` (counting dots, the multimodal CPU task; 1.0 / 0.1 / 0).
    :data:`MATH_EVAL_SOURCES`: verl's own ``verl/utils/reward_score/math_dapo.py:compute_score`` (``Answer:`` line,
        ``\\boxed{}`` fallback; +1 / -1), the scorer verl already uses for DAPO-Math-17K (``math_dapo``) and AIME.
    anything else (``openai/gsm8k``, ``math_dapo``, MATH...): ``verl.utils.reward_score.default_compute_score``.
"""

from __future__ import annotations

from typing import Any

from verl_rhythm.data import arithmetic, countdown, images

MATH_EVAL_SOURCES = ("aime24", "aime25", "amc23", "math500", "olympiadbench")
"""The ``data_source`` names :mod:`verl_rhythm.data.prepare_math` gives the paper's evaluation sets; validation
metrics are reported per name (``val-core/<data_source>/acc/mean@N``)."""


def compute_score(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None, **kwargs: Any
) -> dict[str, Any] | float:
    """Score one response.

    Args:
        data_source: the row's ``data_source``.
        solution_str: the decoded response.
        ground_truth: the row's ``reward_model.ground_truth``.
        extra_info: the row's ``extra_info``.
        **kwargs: passed through to verl's ``default_compute_score`` (``sandbox_fusion_url``, ...).

    Returns:
        ``{"score": float, "acc": bool, ...}`` for Countdown and the math sets (``acc`` becomes the validation
        accuracy metric); whatever verl's scorer returns otherwise.
    """
    if data_source == countdown.DATA_SOURCE:
        value = countdown.compute_score(solution_str, ground_truth)
        return {"score": value, "acc": value == 1.0}
    if data_source == arithmetic.DATA_SOURCE:
        value = arithmetic.compute_score(solution_str, ground_truth)
        return {"score": value, "acc": value == 1.0}
    if data_source == images.DATA_SOURCE:
        value = images.compute_score(solution_str, ground_truth)
        return {"score": value, "acc": value == 1.0}
    if data_source in MATH_EVAL_SOURCES:
        from verl.utils.reward_score import math_dapo

        return math_dapo.compute_score(solution_str, str(ground_truth))
    from verl.utils.reward_score import default_compute_score

    return default_compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)
