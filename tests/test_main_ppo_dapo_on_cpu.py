# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""DAPO's options together with rhythm, end to end on the CPU backend.

One ``main_ppo`` run (the v1 synchronous trainer) with clip-higher (``actor.clip_ratio_high``), DAPO's group filter
(``algorithm.filter_groups``: the v1 ``ReplayBuffer`` evicts groups whose rewards all agree and generates
replacements, ``verl/trainer/ppo/v1/replay_buffer.py``), DAPO's reward manager (``reward.reward_manager.name=dapo``,
``verl/experimental/reward_loop/reward_manager/dapo.py``; no overlong penalty, so its reward is the task's score).
Same harness and checks as ``test_main_ppo_on_cpu.py``: every update trained on GRPO × γ, γ recomputed here.
"""

import pytest
from test_main_ppo_on_cpu import RHYTHM_KEYS, SMALL, assert_grpo_times_gamma, model_and_data, pad

from verl_rhythm.testing.main_ppo import run_main_ppo

pytestmark = pytest.mark.slow

DAPO = [
    "actor_rollout_ref.actor.clip_ratio_low=0.2",
    "actor_rollout_ref.actor.clip_ratio_high=0.28",
    "algorithm.filter_groups.enable=True",
    "algorithm.filter_groups.metric=reward",
    "reward.reward_manager.name=dapo",
]
"""KL in the reward and the KL loss need verl's reference model, whose FSDP2 engine always offloads its parameters to
pinned host memory (``verl/workers/engine/fsdp/transformer_impl.py``: ``CPUOffloadPolicy(pin_memory=True)`` for a
forward-only engine), which needs an accelerator: they cannot run on the CPU backend (docs/cpu.md)."""


def test_dapo_options_train_on_grpo_times_gamma(tmp_path):
    root, model, data = model_and_data(tmp_path)
    result = run_main_ppo(root / "dapo", model, data, [*SMALL, *DAPO, "trainer.total_training_steps=2"])
    assert result.returncode == 0, result.log[-6000:]
    assert result.steps == [1, 2]
    for step, m in result.metrics:
        missing = [k for k in RHYTHM_KEYS if k not in m]
        assert not missing, f"step {step} lacks {missing}"
        assert m["rhythm/gamma_mean"] > 1 and m["rhythm/capture_s"] > 0
    assert len(result.dumps) == 2
    for dump in result.dumps:
        scores = pad(dump["rm_scores"]).sum(-1)
        groups = {}
        for prompt, score in zip(dump["prompts"], scores.tolist(), strict=True):
            groups.setdefault(tuple(prompt.tolist()), set()).add(score)
        # the group filter ran: only groups whose task scores vary reach the update
        assert len(groups) == 4 and all(len(s) > 1 for s in groups.values()), "a uniform group reached the update"
    assert_grpo_times_gamma(result.dumps)
