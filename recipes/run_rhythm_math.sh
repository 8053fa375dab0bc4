#!/usr/bin/env bash
# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
# The paper's math setting (arXiv 2510.13554, Sec. 5): DAPO-Math-17K train; AIME24/AIME25/AMC23/MATH500/
# OlympiadBench eval; batch 512, mini-batch 32, lr 1e-6, temperature 1.0, no KL / entropy loss; one node x 8 GPUs.
#
# Data (once; needs the hub, or pass local files, see --help):
#   python -m verl_rhythm.data.prepare_math --out ~/data/rhythm_math
# Run:     MODEL_SIZE=8b RESPONSE=1k bash recipes/run_rhythm_math.sh      (recipe rhythm_math; the default)
#          MODEL_SIZE=4b RESPONSE=8k STRATEGY=none bash recipes/run_rhythm_math.sh
# The paper's whole table: recipes/run_rhythm_table.sh. Extra arguments are hydra overrides.
# DRY_RUN=1 prints the composed config instead of training (no GPU needed).
set -xeuo pipefail

RECIPES=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}

MODEL_SIZE=${MODEL_SIZE:-8b}
RESPONSE=${RESPONSE:-1k}
DATA_DIR=${DATA_DIR:-${HOME}/data/rhythm_math}
STRATEGY=${STRATEGY:-coupled}
NNODES=${NNODES:-1}
NGPUS_PER_NODE=${NGPUS_PER_NODE:-8}
LOGGER=${LOGGER:-'["console"]'}

case "${MODEL_SIZE}-${RESPONSE}" in
    8b-1k) CONFIG_NAME=rhythm_math ;;
    4b-1k) CONFIG_NAME=rhythm_math_4b ;;
    4b-8k) CONFIG_NAME=rhythm_math_4b_8k ;;
    8b-8k) CONFIG_NAME=rhythm_math_8b_8k ;;
    *)
        echo "MODEL_SIZE must be 4b or 8b and RESPONSE 1k or 8k (got ${MODEL_SIZE}, ${RESPONSE})" >&2
        exit 2
        ;;
esac

EVAL_SETS=(aime24 aime25 amc23 math500 olympiadbench)
VAL_FILES=$(printf "'${DATA_DIR}/%s.parquet'," "${EVAL_SETS[@]}")

DATA=(
    data.train_files="${DATA_DIR}/dapo_math_17k.parquet"
    data.val_files="[${VAL_FILES%,}]"
)

# a local copy of the weights, if given (the recipe names the hub id)
MODEL=()
if [ -n "${MODEL_PATH:-}" ]; then
    MODEL+=(actor_rollout_ref.model.path="${MODEL_PATH}")
fi

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
    --config-name "${CONFIG_NAME}" \
    "${EXTRA[@]}" \
    "${DATA[@]}" \
    "${MODEL[@]}" \
    "${ALGORITHM[@]}" \
    "${TRAINER[@]}" \
    "$@"
