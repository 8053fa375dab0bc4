#!/usr/bin/env bash
# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
# The math setting on a single GPU (80 GB class; Qwen3-4B-Base, 1K by default): 64 prompts per step, mini-batch 16,
# FSDP parameter and optimiser offload. A development scale, not the paper's batch. Same environment variables and
# arguments as run_rhythm_math.sh (MODEL_SIZE=8b needs a 141 GB GPU or more offload).
set -euo pipefail

RECIPES=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

ONE_GPU=(
    data.train_batch_size=64
    actor_rollout_ref.actor.ppo_mini_batch_size=16
    actor_rollout_ref.actor.fsdp_config.param_offload=true
    actor_rollout_ref.actor.fsdp_config.optimizer_offload=true
    actor_rollout_ref.rollout.gpu_memory_utilization=0.4
)

MODEL_SIZE=${MODEL_SIZE:-4b} NNODES=1 NGPUS_PER_NODE=1 exec bash "${RECIPES}/run_rhythm_math.sh" "${ONE_GPU[@]}" "$@"
