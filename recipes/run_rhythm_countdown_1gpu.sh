#!/usr/bin/env bash
# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
# Countdown on a single GPU (80 GB class): 64 prompts per step, mini-batch 16, FSDP parameter and optimiser offload.
# A development scale, not the paper's batch. Same environment variables and arguments as run_rhythm_countdown.sh.
set -euo pipefail

RECIPES=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

ONE_GPU=(
    data.train_batch_size=64
    actor_rollout_ref.actor.ppo_mini_batch_size=16
    actor_rollout_ref.actor.fsdp_config.param_offload=true
    actor_rollout_ref.actor.fsdp_config.optimizer_offload=true
    actor_rollout_ref.rollout.gpu_memory_utilization=0.4
)

NNODES=1 NGPUS_PER_NODE=1 exec bash "${RECIPES}/run_rhythm_countdown.sh" "${ONE_GPU[@]}" "$@"
