# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The benchmark scripts run (the GPU command's CPU dry run, engine stage included, is
``tests/test_gpu_check_dry_run_on_cpu.py``): a tiny training-regime row of the capture benchmark.

Their numbers are not asserted (time lives in the benchmarks); what is asserted is what must hold on any machine: the
GPU scripts' exactness checks pass on CPU (FlashAttention-2 through the CPU flash-attn, strict, bf16 only, as on a
GPU), every stage's results reach ``--out``, ``--device cuda`` without CUDA stops with one line, and the regime row
reports the paths it claims, no host sync added during the forward, and one sync in ``finalize``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """``python ARGS``, or ``bash SCRIPT.sh ARGS`` (the wrappers a GPU machine runs, with this interpreter)."""
    cmd = ["bash", *args] if args[0].endswith(".sh") else [sys.executable, *args]
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("script", ["benchmarks/gpu_check.sh", "benchmarks/gpu_engine_check.sh"])
def test_gpu_scripts_refuse_a_torch_without_cuda_in_one_line(script):
    """Run as written on a GPU machine (``bash benchmarks/gpu_check.sh``), here: one line, exit status 1."""
    proc = _run([script, "--device", "cuda"], timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("--device cuda: this Python's torch"), proc.stderr[-2000:]


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


@pytest.mark.slow
def test_capture_sp_benchmark_counts_what_sequence_parallelism_adds(tmp_path):
    """``benchmarks/capture_sp.py`` at sp 1 and 2 on the tiny model: the capture adds no collective during the forward
    and, under sp 2, exactly one all-gather of the head spans and one all-reduce of the WAAD/FAI group sums (2 × T
    fp32) per micro-batch; it adds the same host syncs at both sizes."""
    out = tmp_path / "sp.json"
    proc = _run(["benchmarks/capture_sp.py", "--sp", "1", "2", "--lengths", "90", "61", "--out", str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {(r["sp"], r["rank"]): r for r in json.loads(out.read_text())}
    assert set(rows) == {(1, 0), (2, 0), (2, 1)}
    assert rows[1, 0]["collectives_added"] == []
    heads_per_rank = 3 * 4 // 2  # 3 selected layers of the tiny model, 4 heads, 2 ranks
    for rank in (0, 1):
        row = rows[2, rank]
        assert row["collectives_added"] == [["allgather_", (2 * heads_per_rank + 1) * 4], ["allreduce_", 2 * 151 * 4]]
        assert row["syncs_added"] == rows[1, 0]["syncs_added"]
        assert row["ops_added_per_layer"] > 0


def test_capture_memory_benchmark_prints_the_ops_of_both_band_schedules(tmp_path):
    """``benchmarks/capture_memory.py`` (meta tensors: no memory, no data) prints the aten ops of one recorded layer.
    Both schedules loop over the full rows' query chunks; on top of that the CPU block loop (``--band-loop``) adds ops
    for every 64-row block, which the CUDA tiles do not: the gap between the two grows with the length by at least
    one op per block. No host read in either."""
    ops = {}
    for schedule in ("tiles", "loop"):
        for length in (1024, 4096):
            out = tmp_path / f"{schedule}{length}.json"
            args = ["benchmarks/capture_memory.py", "--batches", f"2x{length}", "--heads", "9", "--kv-heads", "3"]
            args += ["--head-dim", "64", "--out", str(out)] + (["--band-loop"] if schedule == "loop" else [])
            proc = _run(args, timeout=300)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            (row,) = json.loads(out.read_text())
            assert row["syncs"] == [] and f"| {row['aten_ops']:,} |" in proc.stdout, proc.stdout
            ops[schedule, length] = row["aten_ops"]
    gap = {length: ops["loop", length] - ops["tiles", length] for length in (1024, 4096)}
    assert gap[1024] > 0 and gap[4096] - gap[1024] >= (4096 - 1024) // 64, ops
