# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The GPU command, ``bash benchmarks/gpu_check.sh --out OUT``, run here as written with ``--dry-run``: every stage
on CPU at a reduced size (the kernels in Triton's interpreter, FlashAttention-2 through the CPU flash-attn in strict
mode, bf16 only, as on a GPU), so that the first GPU run cannot fail on an import, a version or a path.

The version matrix (``tests/matrix.sh``) runs this file in the GPU image's versions (transformers 5.17.0, Triton
3.6.0, no verl): only torch, transformers and Triton installed, the repository on ``PYTHONPATH``. What is asserted:
exit status 0, every stage's JSON in OUT with its checks passed, the versions the summary names are this Python's,
the kernels stage covered bf16 in every variant, fp16 and fp32 on the Triton path, and the engine stage either said
in one line that verl is missing or, where verl is installed, ran verl's FSDP engine with sdpa, eager and
FlashAttention-2, packed and padded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_command_runs_every_stage_on_cpu(tmp_path):
    out = tmp_path / "gpu_check"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("TRITON_INTERPRET", None)  # the script sets it for its dry run, as a clean shell would not have it
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--out", str(out), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["finished"] == ["kernels", "exactness", "regime", "overhead"], summary
    assert summary["torch"] == torch.__version__ and summary["transformers"] == transformers.__version__
    assert summary["verdict"] and "not settled" in summary["verdict"][0]  # timings are CUDA figures
    for stage in summary["finished"]:
        result = json.loads((out / f"{stage}.json").read_text())
        assert result["ok"] and result["rows"], (stage, result)
    kernels = json.loads((out / "kernels.json").read_text())["rows"]
    if importlib.util.find_spec("triton") is not None:
        import triton

        assert summary["triton"] == triton.__version__
        assert {(r["dtype"], r["variant"]) for r in kernels} == {
            ("bfloat16", v) for v in ("plain", "window", "softcap", "sinks")
        } | {("float16", "plain"), ("float32", "plain")}
        assert all(r["paths"] == ["triton"] for r in kernels), kernels
    (regime,) = json.loads((out / "regime.json").read_text())["rows"]
    assert regime["impl"] == "flash_attention_2" and regime["exact"] and regime["paths"] == ["batched"], regime
    # the comparisons that settle the CUDA defaults ran (their timings mean nothing on CPU)
    assert "ratio_batched" in regime and ("ratio_triton" in regime or importlib.util.find_spec("triton") is None)
    assert ("ratio_batched_fp32_grid" in regime) != ("ratio_batched_bf16_grid" in regime), regime
    assert ("ratio_batched_block_loop" in regime) != ("ratio_batched_tiles" in regime), regime
    # the verdict a GPU run prints, from these rows as if a GPU had measured them: one line per default
    sys.path.insert(0, str(ROOT))
    from benchmarks.gpu_check import verdict

    exactness = json.loads((out / "exactness.json").read_text())["rows"]
    lines = verdict({"device": "a GPU", "regime": [{**regime, "default": "triton"}], "exactness": exactness})
    assert [line.split("=")[0] for line in lines] == [
        "Kernels.triton",
        "Kernels.low_precision_grid",
        "Kernels.tiled_bands",
        "fused",
        "capture overhead target (<",
    ], lines
    engine = json.loads((out / "engine.json").read_text())
    if importlib.util.find_spec("verl") is None:
        assert "skipped" in engine and "engine: skipped" in proc.stdout
    else:  # verl's FSDP engine: sdpa and eager (fp32 checked, bf16 reported), FlashAttention-2 in bf16 only
        assert engine["ok"] and engine["versions"]["flash_attn"] == "cpu (verl-rhythm)", engine
        runs = {(r["attn"], r["dtype"], r["use_remove_padding"]): r for r in engine["runs"]}
        expected = {(a, d, p) for a in ("sdpa", "eager") for d in ("fp32", "bf16") for p in (True, False)}
        assert set(runs) == expected | {("flash_attention_2", "bf16", p) for p in (True, False)}
        for key, run in runs.items():
            assert "error" not in run and run["ok"] and run["check"] == (key[1] == "fp32"), run
    megatron = json.loads((out / "megatron.json").read_text())
    if importlib.util.find_spec("megatron") is None or importlib.util.find_spec("mbridge") is None:
        assert "skipped" in megatron and "megatron: skipped" in proc.stdout
    else:  # verl's Megatron engine (the matrix's megatron environment): fp32 checked, bf16 reported
        runs = {r["dtype"]: r for r in megatron["runs"]}
        assert megatron["ok"] and sorted(runs) == ["bf16", "fp32"] and runs["fp32"]["check"], megatron
    assert "gpu_check: OK" in proc.stdout
