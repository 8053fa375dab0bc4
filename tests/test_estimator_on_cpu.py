# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The ``rhythm`` estimator inside verl 0.9.1's real advantage code, and its entry-point registration."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.ray_trainer import compute_advantage

from verl_rhythm.credit import compute_gamma
from verl_rhythm.glue import core_algos as rhythm_algos
from verl_rhythm.testing import credit_ref


def make_batch(bs=8, t=12, group=4, seed=0):
    """A DataProto shaped like verl's own CPU advantage tests: outcome reward on the last valid token."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, t + 1, (bs,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).float()
    rewards = torch.zeros(bs, t)
    rewards[torch.arange(bs), lengths - 1] = torch.randint(0, 2, (bs,), generator=g).float()
    uid = np.array([f"p{i // group}" for i in range(bs)], dtype=object)
    data = DataProto.from_dict(
        tensors={"token_level_rewards": rewards, "response_mask": mask}, non_tensors={"uid": uid}
    )
    stats = {"rhythm_waad": torch.rand(bs, t, generator=g) * 10, "rhythm_fai": torch.rand(bs, t, generator=g)}
    return data, stats


def algo(norm=True, **rhythm):
    return OmegaConf.create(
        {"adv_estimator": "rhythm", "gamma": 1.0, "lam": 1.0, "norm_adv_by_std_in_grpo": norm, "rhythm": rhythm}
    )


@pytest.mark.parametrize("norm", [True, False])
def test_strategy_none_equals_verl_grpo_exactly(norm):
    data, _ = make_batch()
    ref = compute_advantage(data.slice(0, 8), adv_estimator="grpo", norm_adv_by_std_in_grpo=norm)
    got = compute_advantage(data.slice(0, 8), adv_estimator="rhythm", config=algo(norm, strategy="none"))
    assert torch.equal(got.batch["advantages"], ref.batch["advantages"])
    assert torch.equal(got.batch["returns"], ref.batch["returns"])


@pytest.mark.parametrize("strategy", ["uniform", "random"])
def test_attention_free_strategies_run_from_the_four_stock_fields(strategy):
    data, _ = make_batch()
    grpo = compute_advantage(data.slice(0, 8), adv_estimator="grpo").batch["advantages"]
    with rhythm_algos.estimator_inputs(data.batch["response_mask"], step=3) as handoff:
        got = compute_advantage(data.slice(0, 8), adv_estimator="rhythm", config=algo(strategy=strategy))
    adv = got.batch["advantages"]
    assert bool((torch.isclose(adv, grpo) | torch.isclose(adv, 1.5 * grpo)).all())
    if strategy == "uniform":
        assert torch.equal(adv, grpo * torch.where(data.batch["response_mask"] > 0, 1.5, 1.0))
    assert handoff.metrics["rhythm/gamma_mean"] > 1.0  # the metrics come back through the hand-off


@pytest.mark.parametrize("strategy", ["coupled", "local", "global"])
@pytest.mark.parametrize("sign", ["both", "positive", "negative"])
def test_attention_strategies_scale_verl_grpo_by_the_credit_gamma(strategy, sign):
    """verl's GRPO advantage × γ of the spec-only credit reference (:mod:`verl_rhythm.testing.credit_ref`), on the
    advantages the sign mode selects."""
    data, stats = make_batch(bs=12, t=30, seed=1)
    fn = core_algos.get_adv_estimator_fn("rhythm")
    adv, ret = fn(
        token_level_rewards=data.batch["token_level_rewards"],
        response_mask=data.batch["response_mask"],
        config=algo(strategy=strategy, sign=sign),
        index=data.non_tensor_batch["uid"],
        **stats,
    )
    grpo, _ = core_algos.compute_grpo_outcome_advantage(
        data.batch["token_level_rewards"], data.batch["response_mask"], data.non_tensor_batch["uid"]
    )
    assert bool((grpo > 0).any()) and bool((grpo < 0).any())
    gamma = credit_ref.gamma_batch(strategy, data.batch["response_mask"], stats["rhythm_waad"], stats["rhythm_fai"])
    expect = credit_ref.scale_advantages(grpo, gamma, sign)
    torch.testing.assert_close(adv.double(), expect, atol=1e-6, rtol=1e-6)
    assert torch.equal(adv, ret)
    assert bool((gamma > 1).any())
    assert not torch.allclose(adv, grpo)  # γ changed some advantage of the selected sign
    # and exactly the product's own γ, to the bit
    product = compute_gamma(strategy, data.batch["response_mask"], waad=stats["rhythm_waad"], fai=stats["rhythm_fai"])
    scaled = {"both": torch.ones_like(grpo, dtype=torch.bool), "positive": grpo > 0, "negative": grpo < 0}[sign]
    assert torch.equal(adv, torch.where(scaled, grpo * product.gamma, grpo))


def test_missing_capture_fails_loudly_and_says_how_to_fix():
    data, _ = make_batch()
    with pytest.raises(ValueError, match="the rhythm capture did not run") as e:
        compute_advantage(data, adv_estimator="rhythm", config=algo(strategy="coupled"))
    assert "strategy=none" in str(e.value) and "VERL_USE_EXTERNAL_PLUGINS" in str(e.value)
    with pytest.raises(ValueError, match="entropy"):
        compute_advantage(data, adv_estimator="rhythm", config=algo(strategy="entropy"))


def test_bad_config_fails_before_any_work():
    data, _ = make_batch()
    with pytest.raises(ValueError, match="algorithm.rhythm.top_q"):
        compute_advantage(data, adv_estimator="rhythm", config=algo(top_q=2.0))


def random_gamma_at(data, step: int, seed: int = 11) -> torch.Tensor:
    """The advantages verl's compute_advantage gives under the random control at training step ``step``."""
    config = algo(strategy="random", seed=seed)
    with rhythm_algos.estimator_inputs(data.batch["response_mask"], step=step):
        out = compute_advantage(data.slice(0, len(data)), adv_estimator="rhythm", config=config)
    return out.batch["advantages"]


def test_random_control_draws_from_seed_plus_step_so_a_resumed_run_repeats_the_uninterrupted_one():
    data, _ = make_batch(bs=8, t=40, group=4)
    mask = data.batch["response_mask"]
    uninterrupted = [random_gamma_at(data, step) for step in range(1, 6)]  # steps 1..5 in one process
    assert not torch.equal(uninterrupted[0], uninterrupted[1])  # a fresh draw each step
    # a run resumed at step 4 (nothing called before in its life) and one that made many calls in between
    assert torch.equal(random_gamma_at(data, 4), uninterrupted[3])
    for _ in range(7):
        random_gamma_at(data, 2)
    assert torch.equal(random_gamma_at(data, 5), uninterrupted[4])
    # the draw is exactly seed + step, rebuilt from the credit code alone
    gamma = compute_gamma("random", mask, generator=torch.Generator().manual_seed(11 + 5)).gamma
    grpo = compute_advantage(data.slice(0, len(data)), adv_estimator="grpo").batch["advantages"]
    assert torch.equal(uninterrupted[4], grpo * gamma)
    assert not torch.equal(random_gamma_at(data, 5, seed=12), uninterrupted[4])


ENTRY = textwrap.dedent(
    """
    import sys
    assert "verl_rhythm" not in sys.modules
    import verl
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn
    try:
        fn = get_adv_estimator_fn("rhythm")
    except ValueError:
        print("NOT REGISTERED")
    else:
        print("REGISTERED", fn.__module__)
    """
)


@pytest.mark.parametrize("policy,expect", [("auto", "REGISTERED verl_rhythm.glue.core_algos"), ("none", "NOT")])
def test_import_verl_alone_registers_the_estimator_through_the_entry_point(policy, expect, tmp_path):
    env = dict(os.environ, VERL_USE_EXTERNAL_PLUGINS=policy)
    out = subprocess.run([sys.executable, "-c", ENTRY], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1].startswith(expect)


def test_registration_is_idempotent():
    import importlib

    importlib.import_module("verl_rhythm.glue.plugin")
    core_algos.register_adv_est("rhythm")(rhythm_algos.compute_rhythm_outcome_advantage)  # same object: no-op
    assert core_algos.get_adv_estimator_fn("rhythm") is rhythm_algos.compute_rhythm_outcome_advantage
