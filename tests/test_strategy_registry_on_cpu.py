# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""A strategy declared once, in this file alone, reaches every place that depends on the set of strategies.

The ``late`` strategy below (anchors in the second half of the response) is registered by a fixture and removed
afterwards. It runs through verl 0.9.1's real ``compute_advantage`` with the rhythm estimator, through the
estimator's missing-statistics check, the config validation, the trainer's fetch list, the CLI choices and
``verl-rhythm analyze`` on the tiny random Llama; its γ is checked against a plain-Python reading of its rule.
"""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from test_analyze_e2e_on_cpu import run_cli, tiny_checkpoint
from test_estimator_on_cpu import make_batch
from verl.trainer.ppo.ray_trainer import compute_advantage

from verl_rhythm.cli import build_parser
from verl_rhythm.config import RhythmConfig, RhythmConfigError
from verl_rhythm.credit import register_strategy, strategies, unregister_strategy
from verl_rhythm.glue import core_algos as rhythm_algos
from verl_rhythm.glue.tq_fields import ENTROPY, FAI, WAAD
from verl_rhythm.glue.trainer_base import fetch_fields


def late_gamma(fai: list[float], top_q: float, gamma_amp: float) -> list[float]:
    """The ``late`` rule read literally: the top ceil(q * n) FAI tokens (ties to the earlier) at positions >= n // 2
    get γ_amp; responses under two tokens are left alone."""
    n = len(fai)
    if n < 2:
        return [1.0] * n
    k = math.ceil(top_q * n - 1e-9)
    top = sorted(range(n), key=lambda i: (-fai[i], i))[:k]
    return [gamma_amp if i in top and i >= n // 2 else 1.0 for i in range(n)]


@pytest.fixture
def late():
    @register_strategy("late", needs=("fai",), summary="anchors in the second half of the response")
    def select(tokens):
        return tokens.anchor & (tokens.position >= tokens.n_valid[:, None] // 2)

    @register_strategy("hot", needs=("entropy",), summary="entropy tokens")
    def select_hot(tokens):
        return tokens.top(tokens.entropy)

    yield select
    unregister_strategy("late")
    unregister_strategy("hot")


def algo(**rhythm):
    return OmegaConf.create({"adv_estimator": "rhythm", "gamma": 1.0, "lam": 1.0, "rhythm": rhythm})


def test_a_registered_strategy_runs_through_verls_compute_advantage(late):
    data, stats = make_batch(bs=8, t=16, group=4)
    mask = data.batch["response_mask"]
    grpo = compute_advantage(data.slice(0, 8), adv_estimator="grpo").batch["advantages"]
    with rhythm_algos.estimator_inputs(mask, step=7, **stats) as handoff:
        out = compute_advantage(data.slice(0, 8), adv_estimator="rhythm", config=algo(strategy="late", top_q=0.5))
    expect = torch.ones_like(grpo)
    for i in range(8):
        n = int(mask[i].sum())
        expect[i, :n] = torch.tensor(late_gamma(stats["rhythm_fai"][i, :n].tolist(), 0.5, 1.5))
    assert bool((expect > 1).any())
    assert torch.equal(out.batch["advantages"], grpo * expect)
    assert handoff.metrics["rhythm/amplified_share"] > 0


def test_its_declared_statistics_drive_the_missing_check_the_validation_and_the_fetch_list(late):
    data, _ = make_batch()
    with pytest.raises(ValueError, match="'rhythm_fai'.*the rhythm capture did not run"):
        compute_advantage(data, adv_estimator="rhythm", config=algo(strategy="late"))
    with pytest.raises(ValueError, match="entropy"):
        compute_advantage(data, adv_estimator="rhythm", config=algo(strategy="hot"))
    cfg = RhythmConfig(strategy="late")
    assert cfg.needs == ("fai",) and cfg.needs_attention and not cfg.needs_entropy
    assert fetch_fields(cfg) == [WAAD, FAI]  # the capture writes both; the report metrics use both
    assert fetch_fields(RhythmConfig(strategy="hot")) == [ENTROPY]
    assert fetch_fields(RhythmConfig(strategy="none")) == []
    assert "late" in strategies() and strategies()["late"].select is late
    help_text = build_parser()._subparsers._group_actions[0].choices["analyze"].format_help()
    assert "late" in help_text and "hot" in help_text


def test_an_unregistered_strategy_is_refused_by_key_and_the_name_cannot_be_taken_twice(late):
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("late")(lambda tokens: tokens.valid)
    with pytest.raises(ValueError, match="unknown statistics"):
        register_strategy("odd", needs=("attention",))
    unregister_strategy("late")
    with pytest.raises(RhythmConfigError) as err:
        RhythmConfig(strategy="late")
    assert err.value.key == "strategy" and "coupled" in str(err.value)


def test_a_registered_strategy_runs_through_analyze(late, tmp_path):
    model_dir = tiny_checkpoint(tmp_path / "model")
    summary = run_cli(model_dir, tmp_path / "out", "--strategy", "late", "--device", "cpu")
    cfg = summary["config"]
    assert cfg["strategy"] == "late"
    seqs = summary["sequences"]
    assert any(s["response_tokens"] >= 2 and max(s["fai"]) > 0 for s in seqs)
    for s in seqs:
        expect = late_gamma(s["fai"], cfg["top_q"], cfg["gamma_amp"])
        assert s["gamma"]["late"] == pytest.approx(expect, abs=0, rel=1e-6)
    assert any(g > 1 for s in seqs for g in s["gamma"]["late"])
