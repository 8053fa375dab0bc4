#!/usr/bin/env bash
# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
# Every GPU stage of the rhythm capture in one command, from a clean checkout, within 8 minutes of wall time (Triton's
# JIT compiles included). Needs torch with CUDA and transformers; Triton for the kernels stage; nothing else (no
# verl, ray, flash-attn, internet). Stages (benchmarks/gpu_check.py), each written to OUT/<stage>.json as it ends:
#   kernels    the fused Triton kernels vs float64 dense maps: bf16 in every variant, fp16, fp32 (head dim 128)
#   exactness  the hook's paths (chunked, batched, the fused opt-in and its logits vs stock SDPA) vs float64
#   regime     Qwen3-8B shapes, 16 x 1024 and 2 x 8192: exactness, overhead, extra peak memory, and the default
#              capture vs the batched path and each batched-path choice flipped
#   overhead   SmolLM2-shaped model, N = 2048 and 8192: forward ratio and the capture step's extra peak memory
#   engine     verl's FSDP engine (benchmarks/gpu_engine_check.py) where verl and ray are installed; else one line
#   megatron   verl's Megatron engine, TransformerEngine attention (gpu_engine_check.py --engine megatron) where
#              megatron-core, mbridge and TransformerEngine are installed; else one line
# then OUT/summary.json and, printed, which CUDA defaults the figures confirm or overturn.
#
# Usage, from the repository root:
#   bash benchmarks/gpu_check.sh --out OUT [gpu_check.py args]      # on a machine with one NVIDIA GPU
#   bash benchmarks/gpu_check.sh --out OUT --dry-run                  # the same command on CPU, reduced sizes
# Exit status 1 when a check fails (or, without --dry-run, when this torch has no CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}   # the whole command; the engine stages get what the others leave
start=$(date +%s)
out="" dry=0 args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    --dry-run) dry=1; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
out=${out:-gpu_check_out}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$dry" = 1 ]; then
  export TRITON_INTERPRET=1   # the kernels on CPU tensors (read when Triton is imported)
  device=(--device cpu --sizes 256 --regime 4x256 --regime-scale 16 --repeats 1 --kernel-head-dim 32)
else
  device=(--device cuda)
fi
if [ "$dry" = 0 ] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  exec "$PY" benchmarks/gpu_check.py --device cuda   # says in one line that this torch has no CUDA; exit status 1
fi
DRY=$dry "$PY" - <<'PY'
import importlib.util
import os

import torch
import transformers

try:
    import triton

    tv = triton.__version__
except ImportError:
    tv = "not installed (kernels stage skipped; the capture takes the batched path)"
print(f"torch {torch.__version__} (cuda {torch.version.cuda}), transformers {transformers.__version__}, triton {tv}")
absent = {
    "flash_attn": "flash-attn not installed: the regime stage runs rows of equal length through SDPA, not packed "
    "FlashAttention-2" if os.environ["DRY"] == "0" else "flash-attn not installed: the CPU flash-attn stands in (dry run)",
    "verl": "verl not installed: verl's FSDP engine stage cannot run (needs verl 0.9.1 and ray)",
    "ray": "ray not installed: verl's engine workers cannot start",
}
for module, line in absent.items():
    if importlib.util.find_spec(module) is None:
        print(line)
PY
if [ "$dry" = 0 ]; then
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
fi
rc=0
timeout $((BUDGET_S - 60)) "$PY" benchmarks/gpu_check.py "${device[@]}" --out "$out" "${args[@]}" || rc=$?
left=$((BUDGET_S - ($(date +%s) - start)))
engine_ok=$("$PY" -c 'import importlib.util as u; print(all(u.find_spec(m) for m in ("verl", "ray", "tensordict")))')
if [ "$engine_ok" != True ]; then
  echo "engine: skipped (verl, ray or tensordict not installed; bash benchmarks/gpu_engine_check.sh runs it where they are)"
  echo '{"skipped": "verl, ray or tensordict not installed"}' >"$out/engine.json"
elif [ "$left" -lt 60 ]; then
  echo "engine: skipped (${left}s left of the ${BUDGET_S}s budget)"
  echo "{\"skipped\": \"${left}s left of the budget\"}" >"$out/engine.json"
elif [ "$dry" = 1 ]; then
  timeout "$left" "$PY" benchmarks/gpu_engine_check.py --device cpu --model tiny --lengths 24:40 16:64 \
    --repeats 1 --out "$out/engine.json" || rc=1
else
  timeout "$left" "$PY" benchmarks/gpu_engine_check.py --out "$out/engine.json" || rc=1
fi
left=$((BUDGET_S - ($(date +%s) - start)))
megatron_mods='"verl", "ray", "tensordict", "megatron", "mbridge"'
[ "$dry" = 0 ] && megatron_mods="$megatron_mods, \"transformer_engine\""
megatron_ok=$("$PY" -c "import importlib.util as u; print(all(u.find_spec(m) for m in ($megatron_mods)))")
if [ "$megatron_ok" != True ]; then
  echo "megatron: skipped (needs verl, megatron-core, mbridge$( [ "$dry" = 0 ] && echo ", TransformerEngine"); bash" \
    "benchmarks/gpu_engine_check.sh --engine megatron runs it where they are)"
  echo '{"skipped": "megatron-core, mbridge or TransformerEngine not installed"}' >"$out/megatron.json"
elif [ "$left" -lt 60 ]; then
  echo "megatron: skipped (${left}s left of the ${BUDGET_S}s budget)"
  echo "{\"skipped\": \"${left}s left of the budget\"}" >"$out/megatron.json"
elif [ "$dry" = 1 ]; then
  timeout "$left" "$PY" benchmarks/gpu_engine_check.py --engine megatron --device cpu --model tiny \
    --lengths 24:40 16:64 --repeats 1 --out "$out/megatron.json" || rc=1
else
  timeout "$left" "$PY" benchmarks/gpu_engine_check.py --engine megatron --out "$out/megatron.json" || rc=1
fi
echo "gpu_check: $( [ "$rc" = 0 ] && echo OK || echo "FAILED (exit $rc)" ) in $(($(date +%s) - start))s; results in $out/"
exit $([ "$rc" = 0 ] && echo 0 || echo 1)
