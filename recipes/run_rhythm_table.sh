#!/usr/bin/env bash
# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
# Rerun the paper's comparison (arXiv 2510.13554, Table 1): one run per strategy, everything else equal.
#
#   bash recipes/run_rhythm_table.sh                          (math, Qwen3-8B-Base, 1K: GRPO 39.4 ... coupled 43.2)
#   TASK=countdown bash recipes/run_rhythm_table.sh           (Countdown: GRPO 52.6 -> coupled 63.1)
#   MODEL_SIZE=4b RESPONSE=8k bash recipes/run_rhythm_table.sh
#   STRATEGIES="none coupled" bash recipes/run_rhythm_table.sh
#
# none = GRPO; random and entropy are the paper's controls; global, local, coupled its strategies. Each run is named
# <task>_..._<strategy> (trainer.experiment_name); compare val-core/<eval set>/acc/mean@1. Extra arguments go to
# every run. Set TASK_SCRIPT=run_rhythm_math_1gpu.sh (or ..._countdown_1gpu.sh) for a single GPU.
set -euo pipefail

RECIPES=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TASK=${TASK:-math}
STRATEGIES=${STRATEGIES:-none random entropy global local coupled}
TASK_SCRIPT=${TASK_SCRIPT:-run_rhythm_${TASK}.sh}

if [ ! -f "${RECIPES}/${TASK_SCRIPT}" ]; then
    echo "no launch script ${RECIPES}/${TASK_SCRIPT} (TASK=${TASK}; choose math, countdown or gsm8k)" >&2
    exit 2
fi

for strategy in ${STRATEGIES}; do
    STRATEGY="${strategy}" bash "${RECIPES}/${TASK_SCRIPT}" "$@"
done
