#!/usr/bin/env bash
# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
# Countdown (TinyZero protocol: 4 numbers, 20k train / 512 test), Qwen3-4B-Base, 1K response; one node x 8 GPUs.
#
# Data (once; offline and deterministic):
#   python -m verl_rhythm.data.countdown --out ~/data/countdown
# Run:     bash recipes/run_rhythm_countdown.sh                    (the coupled strategy)
#          STRATEGY=none bash recipes/run_rhythm_countdown.sh      (the GRPO baseline)
# Extra arguments are hydra overrides. DRY_RUN=1 prints the composed config instead of training (no GPU needed).
set -xeuo pipefail

RECIPES=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}

MODEL_PATH=${MODEL_PATH:-Qwen/Qwen3-4B-Base}
DATA_DIR=${DATA_DIR:-${HOME}/data/countdown}
STRATEGY=${STRATEGY:-coupled}
NNODES=${NNODES:-1}
NGPUS_PER_NODE=${NGPUS_PER_NODE:-8}
LOGGER=${LOGGER:-'["console"]'}

DATA=(
    data.train_files="${DATA_DIR}/train.parquet"
    data.val_files="${DATA_DIR}/test.parquet"
)

MODEL=(
    actor_rollout_ref.model.path="${MODEL_PATH}"
)

ALGORITHM=(
    algorithm.rhythm.strategy="${STRATEGY}"
)

TRAINER=(
    trainer.nnodes="${NNODES}"
    trainer.n_gpus_per_node="${NGPUS_PER_NODE}"
    trainer.logger="${LOGGER}"
)

# hydra's own flags go before the overrides
EXTRA=()
if [ "${DRY_RUN:-0}" = 1 ]; then
    EXTRA+=(--cfg job)
fi

"${PYTHON}" -m verl.trainer.main_ppo \
    --config-path "${RECIPES}" \
    --config-name rhythm_countdown \
    "${EXTRA[@]}" \
    "${DATA[@]}" \
    "${MODEL[@]}" \
    "${ALGORITHM[@]}" \
    "${TRAINER[@]}" \
    "$@"
