#!/usr/bin/env bash
# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
# Rhythm capture on a GPU machine (torch + transformers only; no verl, no internet): exactness on CUDA in fp32 and
# bf16 against dense references, the capture's overhead at N = 2048 and 8192, and the training regime (packed bf16
# micro-batches of 16 x 1024 and 2 x 8192 tokens at Qwen3-8B shapes, flash_attention_2 when installed, else SDPA;
# target: at most 2 % on the full-depth estimate). Capped at 290 s (timeout).
# Usage, from the repository root:
#   bash benchmarks/gpu_check.sh [--out report.json] [--smollm2 DIR] [other benchmarks/gpu_check.py args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
exec timeout 290 "$PY" benchmarks/gpu_check.py --device cuda "$@"
