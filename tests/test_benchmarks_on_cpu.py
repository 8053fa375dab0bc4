# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The benchmark scripts run: the GPU check's CPU dry run and a tiny training-regime row of the capture benchmark.

Their numbers are not asserted (time lives in the benchmarks); what is asserted is what must hold on any machine: the
GPU script's exactness checks pass on CPU, and the regime row reports the paths it claims, no host sync added during
the forward, and one sync in ``finalize``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu():
    """``benchmarks/gpu_check.py --device cpu``: the same exactness checks the GPU run makes, at a reduced size."""
    proc = _run(["benchmarks/gpu_check.py", "--device", "cpu", "--sizes", "256", "--regime", "4x256"]
                + ["--regime-scale", "16", "--repeats", "1"])  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "exactness OK" in proc.stdout and "regime exactness OK" in proc.stdout, proc.stdout[-3000:]


@pytest.mark.slow
def test_capture_benchmark_regime_row(tmp_path):
    """A tiny regime row on the embedded SmolLM2: fp32 takes both paths, bf16 the batched one; no sync added."""
    out = tmp_path / "rows.json"
    proc = _run(["benchmarks/capture.py", "--regime", "2x64", "--dtypes", "fp32", "bf16", "--repeats", "1"]
                + ["--step-repeats", "1", "--out", str(out)])  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["dtype"], r["path"], r["paths"]) for r in rows] == [
        ("fp32", "batched", ["batched"]),
        ("fp32", "fused", ["fused"]),
        ("bf16", "batched", ["batched"]),
    ]
    for row in rows:
        assert row["syncs_added"] == 0 and row["syncs_finalize"] == 1, row
        assert row["ops_added_per_layer"] > 0 and row["t_step_capture"] > 0 and row["one_more_attention"] > 1, row
