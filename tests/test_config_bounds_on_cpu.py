# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Every ``algorithm.rhythm.*`` value the validation accepts keeps γ and the advantages finite, in fp32 and bf16.

Values are drawn from far outside the allowed ranges as well (inf, NaN, 1e39, huge integers, negative seeds): each
is either refused with a :class:`RhythmConfigError` naming its key, or the advantage step runs through verl 0.9.1's
own ``compute_advantage`` (``verl/trainer/ppo/ray_trainer.py``) with the statistics handed over the way the trainer
plumbing does, and every advantage is finite, in the dtype of the rewards and once more after a cast to bf16.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.ppo.ray_trainer import compute_advantage

from verl_rhythm.config import (
    GAMMA_AMP_MAX,
    INTRO_WINDOW_MAX,
    STRATEGIES,
    RhythmConfig,
    RhythmConfigError,
)
from verl_rhythm.credit import apply_gamma, compute_gamma
from verl_rhythm.glue import core_algos as rhythm_algos

BS, T, GROUP = 8, 24, 4

hostile_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1e-300, 5e-324, 1.0, 1.5, GAMMA_AMP_MAX, math.nextafter(GAMMA_AMP_MAX, 1e9), 1e39, -1.0]),
    st.integers(-(10**40), 10**40),
)
hostile_ints = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2, 3, INTRO_WINDOW_MAX, INTRO_WINDOW_MAX + 1, 2**63 - 1, 2**63, 2**64]),
    st.floats(allow_nan=True),
    st.booleans(),
)
rhythm_values = st.fixed_dictionaries(
    {"strategy": st.sampled_from(STRATEGIES), "sign": st.sampled_from(["both", "positive", "negative"])},
    optional={
        "top_q": hostile_floats,
        "gamma_amp": hostile_floats,
        "alpha": hostile_floats,
        "head_quantile": hostile_floats,
        "intro_window": hostile_ints,
        "seed": hostile_ints,
        "bottom_score": st.sampled_from(["local", "global"]),
    },
)


def batch(seed: int, reward_scale: float, dtype: torch.dtype):
    """A GRPO batch (groups of 4, outcome reward on the last valid token) and WAAD/FAI/entropy with many ties."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (BS,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    rewards = torch.zeros(BS, T)
    rewards[torch.arange(BS), lengths - 1] = (torch.rand(BS, generator=g) * 2 - 1) * reward_scale
    uid = np.array([f"p{i // GROUP}" for i in range(BS)], dtype=object)
    data = DataProto.from_dict(
        tensors={"token_level_rewards": rewards.to(dtype), "response_mask": mask}, non_tensors={"uid": uid}
    )
    stats = {
        "rhythm_waad": torch.randint(0, 4, (BS, T), generator=g).float(),  # small integers: ties everywhere
        "rhythm_fai": torch.rand(BS, T, generator=g) * 1e30,
        "entropy": torch.rand(BS, T, generator=g),
    }
    return data, stats


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rhythm_values,
    st.booleans(),
    st.integers(0, 2**31),
    st.sampled_from([1.0, 1e3, 1e6]),
    st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_accepted_configs_keep_the_advantages_finite(values, norm, seed, reward_scale, dtype):
    try:
        cfg = RhythmConfig.from_dict(values)
    except RhythmConfigError as err:
        (key,) = [k for k in values if f"algorithm.rhythm.{k}=" in str(err)][:1] or [None]
        assert key is not None, f"the error names no key of {values}: {err}"
        assert "\n" not in str(err)
        return
    config = OmegaConf.create(
        {"adv_estimator": "rhythm", "norm_adv_by_std_in_grpo": norm, "rhythm": cfg.to_dict(), "gamma": 1.0}
    )
    data, stats = batch(seed, reward_scale, dtype)
    mask = data.batch["response_mask"]
    with rhythm_algos.estimator_inputs(mask, **stats) as handoff:
        out = compute_advantage(data, adv_estimator="rhythm", config=config)
    adv = out.batch["advantages"]
    assert bool(torch.isfinite(adv).all()), f"{cfg}: non-finite advantages"
    assert bool(torch.isfinite(adv.to(torch.bfloat16)).all()), f"{cfg}: non-finite in bf16"
    # the same γ on bf16 advantages (a bf16 actor's dtype): still finite
    gamma = compute_gamma(
        cfg.strategy, mask, waad=stats["rhythm_waad"], fai=stats["rhythm_fai"], entropy=stats["entropy"],
        top_q=cfg.top_q, gamma_amp=cfg.gamma_amp, alpha=cfg.alpha, intro_window=cfg.intro_window,
        bottom_score=cfg.bottom_score, generator=torch.Generator().manual_seed(cfg.seed),
    ).gamma  # fmt: skip
    assert bool(torch.isfinite(gamma).all()) and bool((gamma >= 1).all())
    assert bool(torch.isfinite(apply_gamma(adv.to(torch.bfloat16), gamma, cfg.sign)).all())
    assert math.isfinite(handoff.metrics["rhythm/gamma_max"])


def test_the_largest_gamma_the_bounds_allow_is_finite_in_bf16():
    """The coupled rule's worst token, built and computed: at the bounds (γ_amp = GAMMA_AMP_MAX, α = 1, q = 1: every
    token an anchor, equal FAI) a response of k + 2 tokens, k = INTRO_WINDOW_MAX, with one WAAD jump at its second
    token. Every later anchor (WAAD 0, at the median) is dominated and its look-back window's largest Δ is that jump,
    so one token introduces about k anchors: γ reaches 1 + (γ_amp − 1)(1 + k) within one α-share, never above it.
    That γ times the largest advantage (|GRPO| ≤ √n normalised, rewards up to 1e6 otherwise) is finite in bf16."""
    k = INTRO_WINDOW_MAX
    bound = 1 + (GAMMA_AMP_MAX - 1) * (1 + k)
    waad = torch.zeros(1, k + 2)
    waad[0, 1] = 1000.0
    mask = torch.ones(1, k + 2, dtype=torch.bool)
    credit = compute_gamma(
        "coupled", mask, waad=waad, fai=torch.ones(1, k + 2), top_q=1.0, gamma_amp=GAMMA_AMP_MAX, alpha=1.0,
        intro_window=k,
    )  # fmt: skip
    gamma = credit.gamma
    assert bound - (GAMMA_AMP_MAX - 1) <= float(gamma.max()) <= bound, float(gamma.max())
    adv_bound = math.sqrt(BS) * 1e6
    for sign in ("both", "positive", "negative"):
        for a in (adv_bound, -adv_bound):
            scaled = apply_gamma(torch.full((1, k + 2), a, dtype=torch.bfloat16), gamma, sign)
            assert bool(torch.isfinite(scaled).all()), (sign, a)
            assert float(scaled.abs().max()) >= abs(a)  # γ really applied (≥ 1 everywhere, > 1 somewhere)


UNUSED = [("global", "rhythm_waad"), ("local", "rhythm_fai"), ("none", "rhythm_fai"), ("entropy", "rhythm_waad")]


@pytest.mark.parametrize("strategy,spoiled", [*UNUSED, ("random", "rhythm_waad")])
def test_nan_in_a_statistic_the_strategy_does_not_use_does_not_raise(strategy, spoiled):
    data, stats = batch(0, 1.0, torch.float32)
    stats[spoiled][0, 0] = float("nan")
    config = OmegaConf.create({"adv_estimator": "rhythm", "rhythm": {"strategy": strategy}})
    with rhythm_algos.estimator_inputs(data.batch["response_mask"], **stats):
        adv = compute_advantage(data, adv_estimator="rhythm", config=config).batch["advantages"]
    assert bool(torch.isfinite(adv).all())
    clean = dict(stats)
    clean.pop(spoiled)
    with rhythm_algos.estimator_inputs(data.batch["response_mask"], **clean):
        ref = compute_advantage(data, adv_estimator="rhythm", config=config).batch["advantages"]
    if strategy != "random":
        assert torch.equal(adv, ref)


@pytest.mark.parametrize("strategy,spoiled", [("global", "rhythm_fai"), ("coupled", "rhythm_waad")])
def test_nan_in_a_statistic_the_strategy_ranks_by_still_raises(strategy, spoiled):
    data, stats = batch(0, 1.0, torch.float32)
    stats[spoiled][0, 0] = float("nan")
    config = OmegaConf.create({"adv_estimator": "rhythm", "rhythm": {"strategy": strategy}})
    name = spoiled.removeprefix("rhythm_")
    with pytest.raises(ValueError, match=f"'{name}' has NaN or inf"):
        with rhythm_algos.estimator_inputs(data.batch["response_mask"], **stats):
            compute_advantage(data, adv_estimator="rhythm", config=config)
