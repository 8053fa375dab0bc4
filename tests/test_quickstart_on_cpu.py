# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The quickstart takes what verl takes: its own defaults follow the worker layout the user's overrides ask for."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from verl_rhythm import quickstart

RECIPE = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "rhythm_cpu.yaml").read_text())


def test_the_constants_are_the_recipes():
    assert RECIPE["data"]["train_batch_size"] == quickstart.PROMPTS_PER_STEP
    assert RECIPE["actor_rollout_ref"]["actor"]["ppo_mini_batch_size"] == quickstart.PROMPTS_PER_STEP
    assert RECIPE["actor_rollout_ref"]["rollout"]["n"] == quickstart.RESPONSES_PER_PROMPT
    assert RECIPE["actor_rollout_ref"]["model"]["override_config"]["attn_implementation"] == "sdpa"
    assert RECIPE["actor_rollout_ref"]["actor"]["ppo_micro_batch_size_per_gpu"] == quickstart.MICRO_BATCH
    assert RECIPE["actor_rollout_ref"]["rollout"]["log_prob_micro_batch_size_per_gpu"] == quickstart.MICRO_BATCH


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], []),
        (["trainer.n_gpus_per_node=2"], []),  # 32 responses on 2 workers
        (
            ["trainer.n_gpus_per_node=3", "actor_rollout_ref.actor.ulysses_sequence_parallel_size=3"],
            [f"{quickstart.ATTN_KEY}=flash_attention_2", "data.train_batch_size=9",
             "actor_rollout_ref.actor.ppo_mini_batch_size=9", *(f"{k}=12" for k in quickstart.MICRO_KEYS)],
        ),
        (
            ["trainer.n_gpus_per_node=3"],
            ["data.train_batch_size=9", "actor_rollout_ref.actor.ppo_mini_batch_size=9",
             *(f"{k}=12" for k in quickstart.MICRO_KEYS)],
        ),
        (  # the user's keys win
            ["trainer.n_gpus_per_node=3", "+actor_rollout_ref.actor.ulysses_sequence_parallel_size=3",
             f"{quickstart.ATTN_KEY}=eager", "data.train_batch_size=12"],
            ["actor_rollout_ref.actor.ppo_mini_batch_size=12"],
        ),
        (["trainer.n_gpus_per_node=5", "actor_rollout_ref.rollout.n=2"], ["data.train_batch_size=10",
          "actor_rollout_ref.actor.ppo_mini_batch_size=10", *(f"{k}=4" for k in quickstart.MICRO_KEYS)]),
    ],
)  # fmt: skip
def test_fitted_defaults(overrides, expected):
    assert quickstart.fitted_defaults(overrides) == expected


def test_megatron_takes_verls_megatron_configs_and_the_users_keys_win():
    strategy = f"{quickstart.STRATEGY_KEY}=megatron"
    assert quickstart.fitted_defaults([strategy]) == list(quickstart.MEGATRON_DEFAULTS)
    mine = "actor_rollout_ref.ref.megatron.vanilla_mbridge=false"
    assert mine.split("=")[0] + "=true" not in quickstart.fitted_defaults([strategy, mine])
    assert quickstart.engine_label([strategy]) == "Megatron engine"
    assert quickstart.engine_label([]) == "FSDP2 engine"


LAYOUTS = [(w, sp, n) for w in (1, 2, 3, 4, 6) for sp in (1, 2, 3) for n in (2, 4, 5) if w % sp == 0]


@pytest.mark.parametrize("workers, sp, n", LAYOUTS)
def test_the_fitted_batch_satisfies_verls_divisibility_rules(workers, sp, n):
    """The two rules verl checks before training (``verl/utils/config.py:validate_config``: ``train_batch_size · n``
    divisible by the workers; ``engine_workers.py``: the mini-batch's responses divisible by the data-parallel size)."""
    overrides = [f"trainer.n_gpus_per_node={workers}", f"actor_rollout_ref.rollout.n={n}"]
    if sp > 1:
        overrides.append(f"actor_rollout_ref.actor.ulysses_sequence_parallel_size={sp}")
    values = dict(o.split("=", 1) for o in quickstart.fitted_defaults(overrides))
    prompts = int(values.get("data.train_batch_size", quickstart.PROMPTS_PER_STEP))
    mini = int(values.get("actor_rollout_ref.actor.ppo_mini_batch_size", quickstart.PROMPTS_PER_STEP))
    assert prompts >= quickstart.PROMPTS_PER_STEP and mini == prompts
    assert (prompts * n) % workers == 0 and (mini * n) % (workers // sp) == 0
    for key in quickstart.MICRO_KEYS:  # every worker's share splits into whole micro-batches
        assert (prompts * n // (workers // sp)) % int(values.get(key, quickstart.MICRO_BATCH)) == 0
    assert (values.get(quickstart.ATTN_KEY) == "flash_attention_2") == (sp > 1)


def test_the_images_task_trains_the_tiny_vlm_through_verls_multimodal_keys(tmp_path):
    """``--task images`` builds the tiny Qwen2.5-VL and the counting-dots data once, and sets the keys verl's
    multimodal path needs before the user's overrides (which win: Hydra keeps the last value)."""
    import argparse

    from transformers import AutoConfig

    model, data = quickstart.prepare(tmp_path, None, "images")
    assert AutoConfig.from_pretrained(model).model_type == "qwen2_5_vl"
    assert (data / "train.parquet").is_file() and (data / "test.parquet").is_file()
    args = argparse.Namespace(steps=1, save_freq=-1, strategy="coupled", task="images")
    cmd = quickstart.command(model, data, tmp_path, args, ["data.max_response_length=8"])
    for key in quickstart.TASK_OVERRIDES["images"]:
        assert key in cmd
    assert cmd.index("data.max_response_length=16") < cmd.index("data.max_response_length=8")
    assert "data.custom_cls.name=ImageDataset" not in quickstart.command(
        model, data, tmp_path, argparse.Namespace(**{**vars(args), "task": "arithmetic"}), []
    )


@pytest.mark.slow
def test_quickstart_images_prints_the_rhythm_metrics(tmp_path):
    """``python -m verl_rhythm.quickstart --task images --steps 1``: one step of GRPO + rhythm on the tiny VLM."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "verl_rhythm.quickstart", "--task", "images", "--steps", "1", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "task images" in out.stdout
    lines = [line for line in out.stdout.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/1"]
    for field in ("reward", "varied groups", "gamma mean", "amplified", "anchors", "preplan", "capture"):
        assert field in lines[0], f"{field!r} missing from {lines[0]!r}"
    assert "gamma mean -" not in lines[0]  # the rhythm metrics were logged, not left blank
    (row,) = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert row["step"] == 1 and row["data"]["rhythm/capture_s"] > 0 and row["data"]["rhythm/gamma_mean"] >= 1.0
