#!/usr/bin/env bash
# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
# The version matrix: the version-sensitive tests under the transformers and Triton releases users run, each in its
# own venv (.venv-<name>, created if absent) with the CPU torch pinned by tests/constraints-cpu.txt. tests/run.sh
# calls it after the main suite (transformers 5.10.4, Triton 3.9.0, in .venv). An environment with verl starts as a
# copy of .venv (about 30 s instead of 3 to 4 minutes of installing) and gets its pins; one without verl is a fresh
# venv holding only torch, the pins, pytest and matplotlib, as bare as the GPU image.
#
#   tf5.9.0-triton3.6  what `pip install 'verl[vllm]==0.9.1'` resolves on a GPU (transformers 5.9.0, Triton 3.6.0),
#                      with verl: TF + TRITON + ENGINE.
#   tf5.5.3            the oldest transformers verl 0.9.1 accepts (>=5.5.3,<5.11), with verl: TF + ENGINE.
#   image              the GPU image's stack (transformers 5.17.0, Triton 3.6.0; torch, transformers, Triton, pytest
#                      and matplotlib only, the repository on PYTHONPATH, none of verl-rhythm's install requirements):
#                      the hook, TRITON, and the dry run of `bash benchmarks/gpu_check.sh --out OUT` (every stage on
#                      CPU: the capture through models of this transformers, the kernels in this Triton).
#   tf-newest          the newest transformers on the index when this was written (5.25.0), no verl: TF.
#   megatron           the main stack plus verl-rhythm's `megatron` extra (megatron-core, mbridge; pinned by
#                      tests/constraints-megatron.txt), with verl:
#                      verl's Megatron engine on CPU with the capture (tests/test_megatron_engine_on_cpu.py; TP = 2
#                      and PP = 2 on two gloo processes: tests/test_megatron_parallel_on_cpu.py) and main_ppo
#                      training on it (tests/test_main_ppo_megatron_on_cpu.py), which the main suite skips: .venv
#                      has no megatron-core.
# TF is what transformers can break (the attention hook and its uninstall, the capture through real model forwards,
# the attention variants' model classes, transformers' FlashAttention-2 seams under the CPU flash-attn); TRITON the
# kernels in the interpreter and compiled for sm_80/sm_90/gfx90a/gfx942; ENGINE verl's FSDP engine with the capture.
# The capture's tensor-level tests (batched, edge, kernels) depend on torch alone, the same 2.13.0 everywhere: the
# main suite runs them. transformers above 5.10 cannot be installed next to verl 0.9.1 (it requires <5.11), so those
# environments install no verl and test the part of verl-rhythm that does not import it; the tests that need verl
# skip there.
#
# Time each environment adds, measured on 2 cores (setup + tests): tf5.9.0-triton3.6 92 s as a fresh venv (66 s as a
# copy of .venv) + 49 s; tf5.5.3 about as long + 18 s; image 313 s + 89 s; tf-newest 187 s + 11 s (the fresh bare
# venvs' setup measured with other jobs on the machine); megatron 18 s as a copy of .venv (pip's cache warm) + 22 s
# for the engine test, plus 65 s for main_ppo on Megatron and 105 to 135 s for the quickstart on it (each measured
# alone). About 19 minutes in all, next to the main suite's 20.
#
# Usage: bash tests/matrix.sh [ENV ...]   (default: all). Exit status 1 if any environment failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
C=tests/constraints-cpu.txt

TF="tests/test_hook_on_cpu.py tests/test_hook_uninstall_on_cpu.py tests/test_capture_on_cpu.py \
tests/test_capture_variants_on_cpu.py tests/test_cpu_flash_attn_on_cpu.py"
TRITON="tests/test_capture_triton_on_cpu.py"
ENGINE="tests/test_glue_engine_on_cpu.py"

# name | how to install (verl: '.[test,analyze]' with verl, plus the extras of the fifth field; bare: torch + the pins +
# pytest, no verl) | pins | tests | further extras of verl-rhythm
ENVS=(
  "tf5.9.0-triton3.6|verl|transformers==5.9.0 triton==3.6.0|$TF $TRITON $ENGINE"
  "tf5.5.3|verl|transformers==5.5.3|$TF $ENGINE"
  "image|bare|transformers==5.17.0 triton==3.6.0|tests/test_hook_on_cpu.py $TRITON tests/test_gpu_check_dry_run_on_cpu.py"
  "tf-newest|bare|transformers==5.25.0|$TF"
  "megatron|verl|-c tests/constraints-megatron.txt|tests/test_megatron_engine_on_cpu.py \
tests/test_megatron_parallel_on_cpu.py tests/test_main_ppo_megatron_on_cpu.py|megatron"
)

pipq() {  # pip, quiet, without the lines about absent local index folders
  "$@" 2>&1 | grep -v "is ignored: it is neither a file nor a directory"
  return "${PIPESTATUS[0]}"
}

wanted=("$@")
summary=()
failed=0
for spec in "${ENVS[@]}"; do
  IFS='|' read -r name kind pins tests extras <<<"$spec"
  if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " =~ " $name " ]]; then
    continue
  fi
  venv=".venv-$name"
  echo
  echo "================ matrix: $name ($pins; $kind) ================"
  t0=$(date +%s)
  status=ok
  {
    if [ ! -x "$venv/bin/python" ]; then
      if [ "$kind" = verl ] && [ -x .venv/bin/python ]; then
        cp -a .venv "$venv"   # the main suite's venv (verl 0.9.1, CPU torch 2.13.0): only the pins change below
      else
        "$PY" -m venv "$venv"
      fi
    fi
    pipq "$venv/bin/python" -m pip install -q -c "$C" torch==2.13.0 &&
    if [ "$kind" = verl ]; then
      # the pins win over verl-rhythm's and verl's own ranges (verl 0.9.1: transformers >=5.5.3,<5.11)
      pipq "$venv/bin/python" -m pip install -q -c "$C" -e ".[test,analyze${extras:+,$extras}]" $pins
    else
      pipq "$venv/bin/python" -m pip install -q -c "$C" $pins pytest hypothesis matplotlib
    fi
  } || status="install failed"
  t1=$(date +%s)
  versions=$("$venv/bin/python" -c 'import importlib.metadata as m
def v(p):
    try:
        return m.version(p)
    except m.PackageNotFoundError:
        return "-"
print(" ".join(f"{p} {v(p)}" for p in ("torch", "transformers", "triton", "verl")))' 2>/dev/null || echo "?")
  echo "versions: $versions"
  counts=""
  if [ "$status" = ok ]; then
    log=$(mktemp)
    # shellcheck disable=SC2086
    PYTHONPATH="$PWD" "$venv/bin/python" -m pytest -q -p no:cacheprovider $tests 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    counts=$(tail -n 1 "$log" | sed 's/=//g; s/^ *//; s/ *$//')
    rm -f "$log"
    [ "$rc" = 0 ] || status="tests failed"
  fi
  t2=$(date +%s)
  [ "$status" = ok ] || failed=1
  summary+=("matrix $name: $status | $versions | $counts | setup $((t1 - t0))s, tests $((t2 - t1))s")
done
echo
echo "================ matrix summary ================"
printf '%s\n' "${summary[@]}"
exit $failed
