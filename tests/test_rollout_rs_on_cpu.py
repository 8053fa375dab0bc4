# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Rejection sampling (``algorithm.rollout_correction.rollout_rs``) with the rhythm estimator.

verl 0.9.1's v1 ``PPOTrainer._compute_advantage`` (``verl/trainer/ppo/v1/trainer_base.py``) runs
``compute_rollout_correction_and_add_to_batch`` (``verl/trainer/ppo/rollout_corr_helper.py``), which zeroes rejected
tokens of ``response_mask``, and then the advantage step; the trainer glue hands the statistics over on the mask it
fetched before that call. These tests run those two verl functions in that order, as the stock method does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch
from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

from verl_rhythm.credit import apply_gamma, compute_gamma
from verl_rhythm.glue import core_algos as rhythm_algos

BS, T, GROUP = 8, 16, 4


def step_batch(seed: int = 0):
    """A padded advantage-step batch: rewards, masks, old and rollout log-probs (some tokens far apart), stats."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, T + 1, (BS,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    rewards = torch.zeros(BS, T)
    rewards[torch.arange(BS), lengths - 1] = torch.randint(0, 2, (BS,), generator=g).float()
    old = -torch.rand(BS, T, generator=g)
    rollout = old.clone()
    off = torch.rand(BS, T, generator=g) < 0.2
    rollout[off] -= 3.0  # ratio exp(3) = 20: outside any sane threshold
    uid = np.array([f"p{i // GROUP}" for i in range(BS)], dtype=object)
    data = DataProto.from_dict(
        tensors={
            "token_level_rewards": rewards,
            "response_mask": mask,
            "old_log_probs": old * mask,
            "rollout_log_probs": rollout * mask,
        },
        non_tensors={"uid": uid},
    )
    stats = {"rhythm_waad": torch.rand(BS, T, generator=g) * 10, "rhythm_fai": torch.rand(BS, T, generator=g)}
    return data, stats


def stock_advantage_step(data: DataProto, stats: dict, rollout_rs: str, strategy: str = "coupled"):
    """The stock step's order: statistics fetched on the captured mask, rejection, then verl's advantage code."""
    captured = data.batch["response_mask"].clone()
    corr = OmegaConf.create({"rollout_rs": rollout_rs, "rollout_rs_threshold": "0.5_2.0", "bypass_mode": False})
    data, _ = compute_rollout_correction_and_add_to_batch(data, corr)
    algo = OmegaConf.create({"adv_estimator": "rhythm", "gamma": 1.0, "lam": 1.0, "rhythm": {"strategy": strategy}})
    with rhythm_algos.estimator_inputs(captured, **stats) as handoff:
        out = compute_advantage_for_multi_trajectories(
            data, batch_keys=[f"p{i // GROUP}_0_{i}" for i in range(BS)], adv_estimator="rhythm", num_repeat=GROUP,
            config=algo,
        )  # fmt: skip
    return captured, out, handoff.metrics


@pytest.mark.parametrize("rollout_rs", ["token_k1", "seq_mean_k1"])
@pytest.mark.parametrize("strategy", ["coupled", "global", "uniform"])
def test_rejected_tokens_get_no_advantage_and_survivors_the_captured_gamma(rollout_rs, strategy):
    data, stats = step_batch()
    captured, out, metrics = stock_advantage_step(data, stats, rollout_rs, strategy)
    kept = out.batch["response_mask"]
    assert bool((kept <= captured).all()) and bool((kept < captured).any())  # rejection did drop tokens
    grpo, _ = core_algos.compute_grpo_outcome_advantage(
        out.batch["token_level_rewards"], kept, out.non_tensor_batch["uid"]
    )
    gamma = compute_gamma(strategy, captured, waad=stats["rhythm_waad"], fai=stats["rhythm_fai"]).gamma
    adv = out.batch["advantages"]
    assert torch.equal(adv, apply_gamma(grpo, gamma))
    assert bool((adv[kept == 0] == 0).all())
    assert metrics["rhythm/gamma_mean"] >= 1.0


def test_a_mask_with_a_token_the_capture_never_saw_is_refused():
    data, stats = step_batch()
    captured = data.batch["response_mask"].clone()
    row = int((captured.sum(-1) < T).nonzero()[0])
    captured[row, int(captured[row].sum()) - 1] = 0  # the capture is one token shorter than the call's mask
    algo = OmegaConf.create({"adv_estimator": "rhythm", "rhythm": {"strategy": "coupled"}})
    fn = core_algos.get_adv_estimator_fn("rhythm")
    with rhythm_algos.estimator_inputs(captured, **stats), pytest.raises(RuntimeError, match="may only drop tokens"):
        fn(data.batch["token_level_rewards"], data.batch["response_mask"], algo, data.non_tensor_batch["uid"])
    with rhythm_algos.estimator_inputs(captured[:, :-1], **stats), pytest.raises(RuntimeError, match="of shape"):
        fn(data.batch["token_level_rewards"], data.batch["response_mask"], algo, data.non_tensor_batch["uid"])
