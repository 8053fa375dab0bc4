#!/usr/bin/env bash
# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
# The rhythm capture in verl's real FSDP engine on a GPU, checked against the dense reference; see
# benchmarks/gpu_engine_check.py. Run from the repository root on a machine with one NVIDIA GPU.
#
# Needs (GPU machine): torch (2.11 there) and transformers (5.9 there), plus verl==0.9.1 and what importing its FSDP
# engine pulls in: tensordict 0.10, codetiming, hydra-core, omegaconf, peft, accelerate, ray, datasets, pyarrow,
# pandas, pyzmq, msgspec, TransferQueue. flash_attn is optional (the flash_attention_2 run is skipped without it).
# --engine megatron: verl's Megatron engine instead; needs megatron-core and mbridge (tests/constraints-megatron.txt),
# and TransformerEngine for the GPU's own attention spec (without it mbridge cannot build the layers on a GPU).
# With a wheelhouse (pip download of those wheels for the GPU machine's Python): WHEELHOUSE=dir bash this-script;
# they are installed with --no-index --no-deps into a throw-away target folder, never over the machine's torch.
#
# Usage: bash benchmarks/gpu_engine_check.sh [--engine fsdp|megatron] [--out report.json] [gpu_engine_check.py args...]
#        CPU proof of the same path: bash benchmarks/gpu_engine_check.sh --device cpu --model tiny \
#            --lengths 24:40 16:64 --repeats 1 --attn sdpa eager
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}

if [ -n "${WHEELHOUSE:-}" ]; then
  TARGET=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --target "$TARGET" "$WHEELHOUSE"/*.whl
  export PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}"
fi

missing=$("$PY" - "$@" <<'PY'
import importlib
import sys
mods = ["torch", "transformers", "verl", "tensordict", "codetiming", "hydra", "omegaconf", "peft", "ray"]
if "megatron" in sys.argv[1:]:
    mods += ["megatron", "mbridge"]
print(" ".join(m for m in mods if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
  echo "gpu_engine_check: missing Python packages: $missing (see the header of $0)" >&2
  exit 3
fi
"$PY" -c "import torch, transformers, verl; print('torch', torch.__version__, '| transformers', transformers.__version__, \
'| verl', verl.__version__, '| cuda', torch.cuda.is_available())"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_engine_check.py "$@"
