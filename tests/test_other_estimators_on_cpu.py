# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Every other verl estimator is untouched by the plugin: verl's advantage step gives the same advantages and returns
with the plugin's wrapper installed as verl's own function does.

``verl/trainer/ppo/ray_trainer.py:compute_advantage`` is the step both trainers end in (the v1 trainer's
``PPOTrainer._compute_advantage`` calls it); the plugin wraps it (:mod:`verl_rhythm.glue.ray_trainer`). Each
estimator in verl 0.9.1's ``ADV_ESTIMATOR_REGISTRY`` (plus GAE and GRPO, which ``compute_advantage`` handles inline)
runs on one batch with the fields it reads, through the wrapper and through the stock function, with the same
``AlgoConfig``.
"""

import copy

import numpy as np
import pytest
import torch
from verl import DataProto
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo import core_algos, ray_trainer

import verl_rhythm.glue.ray_trainer  # noqa: F401  (the plugin's wrapper of compute_advantage)
from verl_rhythm.wrapping import is_wrapped, stock

ESTIMATORS = sorted({*core_algos.ADV_ESTIMATOR_REGISTRY, "gae", "grpo"} - {"rhythm"})
BS, PROMPT, RESPONSE, N = 8, 3, 6, 4


def _batch(seed: int) -> DataProto:
    """Two groups of four responses of unequal lengths, with every field some estimator reads."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6, 3, 5, 1, 4, 6, 2, 5])
    mask = (torch.arange(RESPONSE) < lengths[:, None]).float()
    rewards = torch.zeros(BS, RESPONSE)
    rewards[torch.arange(BS), lengths - 1] = torch.rand(BS, generator=g)  # distinct: every group varies
    attention = torch.cat([torch.ones(BS, PROMPT), mask], dim=1).long()
    data = DataProto.from_single_dict(
        {
            "prompts": torch.randint(3, 100, (BS, PROMPT), generator=g),
            "responses": torch.randint(3, 100, (BS, RESPONSE), generator=g),
            "attention_mask": attention,
            "response_mask": mask,
            "token_level_rewards": rewards,
            "values": torch.randn(BS, RESPONSE, generator=g) * mask,
            "reward_baselines": torch.rand(BS, generator=g),
            "old_log_probs": -torch.rand(BS, RESPONSE, generator=g) * mask,
            "sum_pi_squared": torch.rand(BS, RESPONSE, generator=g) * mask,
        }
    )
    data.non_tensor_batch["uid"] = np.array([f"g{i // N}" for i in range(BS)], dtype=object)
    data.non_tensor_batch["format_reward"] = np.random.default_rng(seed).integers(0, 2, BS).astype(np.float32)
    data.non_tensor_batch["accuracy_reward"] = rewards.sum(-1).numpy()
    return data


def _config(estimator: str) -> AlgoConfig:
    config = AlgoConfig(adv_estimator=estimator, gamma=0.99, lam=0.95)
    if estimator == "gdpo":
        config = AlgoConfig(adv_estimator=estimator, gdpo_reward_keys=["format_reward", "accuracy_reward"])
    return config


def test_the_wrapper_is_installed_and_the_estimators_are_verls_own():
    assert is_wrapped(ray_trainer.compute_advantage)
    assert stock(ray_trainer.compute_advantage) is not ray_trainer.compute_advantage
    for name in ESTIMATORS:
        fn = core_algos.ADV_ESTIMATOR_REGISTRY.get(name)
        if fn is not None:  # the plugin registers its own estimator and wraps none of verl's
            assert fn.__module__ == core_algos.__name__ and not is_wrapped(fn), name


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_each_other_estimator_gives_verls_advantages_with_the_plugin_installed(estimator):
    data = _batch(seed=len(estimator))
    if estimator != "remax":  # verl passes reward_baselines to any estimator when the batch has it: remax's alone
        data.pop(batch_keys=["reward_baselines"])
    args = dict(adv_estimator=estimator, gamma=0.99, lam=0.95, num_repeat=N, config=_config(estimator))
    plugged = ray_trainer.compute_advantage(copy.deepcopy(data), **args)
    stock_out = stock(ray_trainer.compute_advantage)(copy.deepcopy(data), **args)
    for key in ("advantages", "returns"):
        assert torch.equal(plugged.batch[key], stock_out.batch[key]), f"{estimator}: {key}"
    assert torch.isfinite(plugged.batch["advantages"]).all()
    assert plugged.batch["advantages"].abs().sum() > 0, f"{estimator}: an all-zero advantage would show nothing"
    assert sorted(plugged.batch.keys()) == sorted(stock_out.batch.keys())
    assert plugged.meta_info == stock_out.meta_info  # no rhythm metrics on another estimator's batch
