# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Every verl trainer runs rhythm end to end on the CPU backend: the legacy ``RayPPOTrainer``
(``trainer.use_v1=false``), a recipe trainer built on it with its own ``fit``
(:mod:`verl_rhythm.testing.recipe_trainer`), and the v1 trainer's ``colocate_async`` mode; ``separate_async`` is
refused at start-up on the CPU platform.

Same harness and checks as ``test_main_ppo_on_cpu.py``: two steps of the coupled strategy in a subprocess, the batch
each actor update received read back, its advantages compared with verl's GRPO advantage re-computed here.
"""

import os
import subprocess
import sys

import pytest
import torch
from test_main_ppo_on_cpu import RHYTHM_KEYS, SMALL, assert_grpo_times_gamma, gamma_of_updates, model_and_data

from verl_rhythm.testing.main_ppo import run_main_ppo
from verl_rhythm.testing.recipe_trainer import REVERSED_METRIC

pytestmark = pytest.mark.slow

LEGACY = "trainer.use_v1=false"


def _check(result):
    assert result.returncode == 0, result.log[-6000:]


def _assert_rhythm_trained(result, steps):
    """``rhythm/*`` metrics every step, and every update used GRPO × γ, γ recomputed from the statistics it carried.
    (Whether a group's rewards vary depends on the sampled responses; the exact check holds either way.)"""
    _check(result)
    assert result.steps == steps
    for step, m in result.metrics:
        missing = [k for k in (*RHYTHM_KEYS, "rhythm/span_local_mean", "rhythm/capture_share") if k not in m]
        assert not missing, f"step {step} lacks {missing}"
        assert m["rhythm/amplified_share"] > 0 and m["rhythm/gamma_mean"] > 1
    assert len(result.dumps) == len(steps)
    assert_grpo_times_gamma(result.dumps)
    gamma = gamma_of_updates(result.dumps)  # where GRPO is non-zero: a coupled-strategy value
    assert torch.all(gamma > 1 - 1e-5) and torch.allclose((gamma - 1) * 4, ((gamma - 1) * 4).round(), atol=1e-3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny model and data of ``test_main_ppo_on_cpu.py`` (unique problems: a prompt identifies its group)."""
    return model_and_data(tmp_path_factory.mktemp("trainers"))


@pytest.fixture(scope="module")
def legacy_run(setup):
    root, model, data = setup
    return run_main_ppo(
        root / "legacy", model, data, [*SMALL, LEGACY, "trainer.total_training_steps=2", "trainer.save_freq=2"]
    )


def test_the_legacy_trainer_trains_on_grpo_times_gamma(legacy_run):
    _assert_rhythm_trained(legacy_run, [1, 2])
    dump = legacy_run.dumps[0]
    # the update batch carries no rhythm field (load_dumps checks it); the workers returned the statistics of the
    # old-log-prob pass (joined by load_dumps) already sliced to each response's own tokens, one value per token
    for mask, waad in zip(dump["response_mask"], dump["rhythm_waad"], strict=True):
        assert waad.shape == (int(mask.sum()),) and bool(mask[: len(waad)].all()) and bool((waad > 0).all())


def test_the_legacy_trainer_captures_the_dense_reference_statistics(setup, legacy_run):
    """The WAAD/FAI of step 1 (the initial weights) equal the dense reference of the same sequences: the legacy
    trainer slices the engine's outputs to each token's own position, rows in the batch's order."""
    from transformers import AutoModelForCausalLM

    from verl_rhythm.config import RhythmConfig
    from verl_rhythm.testing.engine import dense_rhythm

    _check(legacy_run)
    _, model_dir, _ = setup
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    dump = legacy_run.dumps[0]
    sequences, lengths = [], []
    for prompt, response, attention in zip(dump["prompts"], dump["responses"], dump["attention_mask"], strict=True):
        attention = attention.bool()
        n = int(attention[len(prompt) :].sum())  # verl's no_padding_2_padding: response tokens of the row
        sequences.append((prompt[attention[: len(prompt)]], response[:n], torch.ones(n, dtype=torch.long)))
        lengths.append(n)
    reference = dense_rhythm(model, sequences, RhythmConfig(waad_window=4, fai_horizon_lo=2, fai_horizon_hi=8))
    for i, ((prompt, _, _), n, ref) in enumerate(zip(sequences, lengths, reference, strict=True)):
        span = slice(len(prompt), len(prompt) + n)
        for key, want in (("rhythm_waad", ref.waad[span]), ("rhythm_fai", ref.fai[span])):
            assert torch.allclose(dump[key][i][:n], want.float(), atol=2e-5), f"{key} of row {i}"


def test_the_legacy_trainer_resumes_at_step_3(setup, legacy_run):
    _check(legacy_run)
    root, model, data = setup
    assert (root / "legacy" / "checkpoints" / "global_step_2").is_dir()
    resumed = run_main_ppo(
        root / "legacy", model, data, [*SMALL, LEGACY, "trainer.total_training_steps=3", "trainer.resume_mode=auto"]
    )
    _check(resumed)
    assert resumed.steps == [3]
    assert all(k in resumed.metrics[0][1] for k in RHYTHM_KEYS)


def test_a_recipe_trainer_with_its_own_fit_trains_rhythm_unchanged(setup):
    """A ``RayPPOTrainer`` subclass with its own loop (and a row reordering between the passes) gets the
    statistics, the GRPO × γ advantages and the metrics without any change to the plugin."""
    root, model, data = setup
    result = run_main_ppo(
        root / "recipe",
        model,
        data,
        [*SMALL, LEGACY, "trainer.total_training_steps=2"],
        entry="verl_rhythm.testing.recipe_trainer",
    )
    _assert_rhythm_trained(result, [1, 2])
    assert all(m.get(REVERSED_METRIC) == 1.0 for _, m in result.metrics)  # the recipe's own fit ran


def test_the_colocate_async_mode_trains_on_grpo_times_gamma(setup):
    """The asynchronous agent loop splits and orders its generate calls run by run, so its samples (unlike the
    synchronous runs') are not reproducible. Shorter responses and eight groups per step make a group whose rewards
    vary (one response without an integer) all but certain, so the GRPO × γ check always has tokens to tell apart."""
    root, model, data = setup
    result = run_main_ppo(
        root / "colocate_async",
        model,
        data,
        [
            *SMALL,
            "data.max_response_length=6",
            "data.train_batch_size=8",
            "actor_rollout_ref.actor.ppo_mini_batch_size=8",
            "trainer.v1.trainer_mode=colocate_async",
            "trainer.total_training_steps=2",
        ],
    )
    _assert_rhythm_trained(result, [1, 2])


def test_the_separate_async_mode_is_refused_at_start_up_on_cpu(tmp_path):
    """``separate_async`` needs standalone rollout replicas and a non-naive checkpoint engine (NCCL and the like):
    the CPU backend has neither, and the launcher stops before Ray starts, naming the key."""
    from verl_rhythm.quickstart import main_ppo_command

    cmd = main_ppo_command("/nonexistent", tmp_path, tmp_path, ["trainer.v1.trainer_mode=separate_async"])
    out = subprocess.run(
        cmd,
        env={**os.environ, "VERL_PLATFORM": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode != 0
    assert "trainer.v1.trainer_mode=separate_async" in out.stderr + out.stdout
    assert "ray init kwargs" not in out.stdout  # stopped before Ray started


def test_the_quickstart_trains_the_legacy_trainer(setup, tmp_path):
    """``python -m verl_rhythm.quickstart --steps 1 trainer.use_v1=false``: the override reaches main_ppo, the step
    line carries the rhythm metrics."""
    _, model, _ = setup
    cmd = [sys.executable, "-m", "verl_rhythm.quickstart", "--model", str(model), "--steps", "1"]
    cmd += ["--out", str(tmp_path), *SMALL, LEGACY]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "legacy trainer (RayPPOTrainer)" in out.stdout
    lines = [line for line in out.stdout.splitlines() if line.startswith("step ")]
    assert len(lines) == 1 and "gamma mean 1." in lines[0] and "capture" in lines[0], out.stdout
