# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""DAPO's options and verl's KL options together with rhythm, end to end on the CPU backend.

One ``main_ppo`` run (the v1 synchronous trainer) with clip-higher (``actor.clip_ratio_high``), DAPO's group filter
(``algorithm.filter_groups``: the v1 ``ReplayBuffer`` evicts groups whose rewards all agree and generates
replacements, ``verl/trainer/ppo/v1/replay_buffer.py``), DAPO's reward manager (``reward.reward_manager.name=dapo``,
``verl/experimental/reward_loop/reward_manager/dapo.py``; no overlong penalty, so its reward is the task's score),
KL in the reward (``verl/trainer/ppo/ray_trainer.py:apply_kl_penalty``) and the KL loss. Same harness and checks as
``test_main_ppo_on_cpu.py``: every update trained on GRPO × γ of the KL-penalised rewards, γ recomputed here.
"""

import pytest
from test_main_ppo_on_cpu import RHYTHM_KEYS, SMALL, assert_grpo_times_gamma, model_and_data, pad

from verl_rhythm.testing.main_ppo import run_main_ppo

pytestmark = pytest.mark.slow

KL_COEF = 0.001
DAPO = [
    "actor_rollout_ref.actor.clip_ratio_low=0.2",
    "actor_rollout_ref.actor.clip_ratio_high=0.28",
    "algorithm.filter_groups.enable=True",
    "algorithm.filter_groups.metric=reward",
    "reward.reward_manager.name=dapo",
    "algorithm.use_kl_in_reward=True",
    f"algorithm.kl_ctrl.kl_coef={KL_COEF}",
    "algorithm.kl_ctrl.type=fixed",
    "actor_rollout_ref.actor.use_kl_loss=True",
    "actor_rollout_ref.actor.kl_loss_coef=0.001",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16",
    # verl's reference model offloads to pinned host memory, which needs an accelerator (recipes/rhythm_cpu.yaml
    # sets it as well)
    "actor_rollout_ref.ref.fsdp_config.param_offload=False",
]


def test_dapo_and_kl_options_train_on_grpo_times_gamma(tmp_path):
    root, model, data = model_and_data(tmp_path)
    result = run_main_ppo(root / "dapo", model, data, [*SMALL, *DAPO, "trainer.total_training_steps=2"])
    assert result.returncode == 0, result.log[-6000:]
    assert result.steps == [1, 2]
    for step, m in result.metrics:
        missing = [k for k in RHYTHM_KEYS if k not in m]
        assert not missing, f"step {step} lacks {missing}"
        assert m["rhythm/gamma_mean"] > 1 and m["rhythm/capture_s"] > 0
        # the KL options ran: a reward penalty at the fixed coefficient and a KL loss term
        assert m["actor/reward_kl_penalty_coeff"] == pytest.approx(KL_COEF)
        assert "actor/kl_loss" in m, sorted(k for k in m if "kl" in k)
    assert len(result.dumps) == 2
    for dump in result.dumps:
        assert "ref_log_prob" in dump, sorted(dump)
        scores = pad(dump["rm_scores"]).sum(-1)
        groups = {}
        for prompt, score in zip(dump["prompts"], scores.tolist(), strict=True):
            groups.setdefault(tuple(prompt.tolist()), set()).add(score)
        # the group filter ran: only groups whose task scores vary reach the update
        assert len(groups) == 4 and all(len(s) > 1 for s in groups.values()), "a uniform group reached the update"
    assert_grpo_times_gamma(result.dumps, kl_in_reward=KL_COEF)
