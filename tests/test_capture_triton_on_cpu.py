# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The fused statistics kernels (Triton) against the dense reference, in Triton's CPU interpreter, and compiled for
real GPUs without one.

- Exactness: through :class:`~verl_rhythm.measure.capture.RhythmCapture`'s public arguments (``kernels`` with
  ``triton=True``, as :func:`~verl_rhythm.measure.kernels.kernels_for` chooses on CUDA), the kernels run on CPU
  tensors under ``TRITON_INTERPRET=1`` (set by ``conftest.py``) and are compared with float64 dense maps of the same
  q/k: packed rows and left-padded batches, GQA, lengths that are not multiples of the 64-row tile, a one-token
  sequence, a one-token and an empty response, FAI windows cut by the end of a sequence; plain attention, sliding
  window, soft-capping, sinks; fp32, fp16 and bf16 (the interpreter's bf16 ``tl.dot`` is wrong in Triton 3.9, so bf16
  tiles are upcast before the dot there: the same exact products). Through a real model's forward (the hook), the
  kernels give the batched path's statistics.
- Compiled for sm_80 and sm_90 at Qwen3-8B's head dim (128) and 64 in a subprocess without the interpreter: tensor
  cores in the SASS (``HMMA`` / ``HGMMA``), no register spills (local memory and stack 0), shared memory within each
  architecture's limit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_capture_batched_on_cpu import VARIANTS, dense_reference, packed_layouts, padded_layouts, random_qk

from verl_rhythm.config import RhythmConfig
from verl_rhythm.measure.capture import RhythmCapture
from verl_rhythm.measure.heads import rhythm_from_head_stats
from verl_rhythm.measure.kernels import kernels_for

TRITON = dataclasses.replace(kernels_for("cpu"), triton=True)
CFG = RhythmConfig(layers=(0,), waad_window=4, fai_horizon_lo=3, fai_horizon_hi=40)
LENGTHS, PROMPTS = [130, 45, 1, 70, 8, 20], [5, 44, 0, 29, 8, 12]
"""130 and 70 cross the 64-row tile; 45 has a one-token response, 8 none, 1 is one token; 20 and 8 are shorter
than H_hi, so their FAI windows end at the sequence's end."""


def _capture(layouts, q, k, opts):
    capture = RhythmCapture(CFG, 1, layouts, kernels=TRITON)
    kwargs = {"sliding_window": opts.get("window"), "softcap": opts.get("softcap"), "s_aux": opts.get("sinks")}
    capture.record(0, q, k, 0.35, **kwargs)
    assert capture.paths == {0: "triton"}
    return capture


def _check(capture, layouts, q, k, opts):
    worst = 0.0
    for layout, got in zip(layouts, capture.head_stats(), strict=True):
        ref, zmax = dense_reference(q, k, 0.35, layout, CFG.waad_window, CFG.fai_horizon_lo, CFG.fai_horizon_hi, **opts)
        tol = 1e-5 + 10 * torch.finfo(torch.float32).eps * zmax
        for name in ("waad", "fai_num"):
            torch.testing.assert_close(getattr(got, name), getattr(ref, name), atol=tol, rtol=0, msg=name)
            worst = max(worst, float((getattr(got, name) - getattr(ref, name)).abs().max()) if layout.length else 0.0)
        # dist = t - E_t[s]: the fp32 rounding of E_t[s] grows with the position
        torch.testing.assert_close(got.dist, ref.dist, atol=tol * 10, rtol=1e-5)
    return worst


CASES = [(v, torch.float32) for v in VARIANTS] + [
    (v, dt) for v in ("plain", "gpt_oss") for dt in (torch.float16, torch.bfloat16)
]


@pytest.mark.parametrize(("variant", "dtype"), CASES, ids=[f"{v}-{str(d)[6:]}" for v, d in CASES])
@pytest.mark.parametrize("kind", ["packed", "padded_left"])
def test_kernels_equal_the_dense_reference(kind, variant, dtype):
    if kind == "packed":
        layouts = packed_layouts(LENGTHS, PROMPTS)
        q, k = random_qk(1, 4, 2, sum(LENGTHS) + 5, 16, seed=3, dtype=dtype)  # 5 trailing pad columns
    else:
        layouts = padded_layouts(LENGTHS, PROMPTS, 140, left=True)
        q, k = random_qk(len(LENGTHS), 4, 2, 140, 16, seed=4, dtype=dtype)
    opts = VARIANTS[variant]
    capture = _capture(layouts, q, k, opts)
    assert _check(capture, layouts, q, k, opts) > 0  # a real comparison
    # the per-token rhythm: that of the dense reference's head statistics (same head groups, WAAD, FAI)
    for i, (layout, got) in enumerate(zip(layouts, capture.finalize(), strict=True)):
        ref, zmax = dense_reference(q, k, 0.35, layout, CFG.waad_window, CFG.fai_horizon_lo, CFG.fai_horizon_hi, **opts)
        want = rhythm_from_head_stats(ref, CFG.head_quantile)
        assert got.waad.shape == (LENGTHS[i],)
        assert torch.equal(got.local_heads, want.local_heads) and torch.equal(got.global_heads, want.global_heads)
        tol = 1e-5 + 10 * torch.finfo(torch.float32).eps * zmax
        torch.testing.assert_close(got.waad, want.waad.float(), atol=tol, rtol=0, msg=f"WAAD of sequence {i}")
        torch.testing.assert_close(got.fai, want.fai.float(), atol=tol, rtol=0, msg=f"FAI of sequence {i}")


def test_non_contiguous_query_views_as_transformers_hands_them():
    """q/k as (B, S, H, D) buffers viewed as (B, H, S, D) (the FlashAttention-2 and Ulysses layouts): read by
    stride, no copy, same statistics."""
    layouts = packed_layouts(LENGTHS, PROMPTS)
    q, k = random_qk(1, 4, 2, sum(LENGTHS), 16, seed=5)
    q_view, k_view = q.transpose(1, 2).contiguous().transpose(1, 2), k.transpose(1, 2).contiguous().transpose(1, 2)
    assert not q_view.is_contiguous()
    a, b = _capture(layouts, q, k, {}).finalize(), _capture(layouts, q_view, k_view, {}).finalize()
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.waad, y.waad) and torch.equal(x.fai, y.fai)


def test_through_a_model_forward_the_kernels_give_the_batched_statistics(cpu_flash_attn):
    """A tiny Llama-GQA on FlashAttention-2 (packed row), its selected layers captured by the kernels and by the
    batched path: the same WAAD, FAI and head groups."""
    from models import tiny_model

    from verl_rhythm.measure.capture import layouts_from_position_ids
    from verl_rhythm.measure.hook import capture_active, install_attention_hook

    install_attention_hook()
    model = tiny_model("llama_gqa", attn_implementation="flash_attention_2")
    lengths = [90, 33, 70]
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    ids = torch.randint(0, 128, pos.shape, generator=torch.Generator().manual_seed(6))
    layouts = layouts_from_position_ids(pos, [torch.arange(n) >= n // 3 for n in lengths])
    cfg = RhythmConfig(layers=(1, 3, 4), fai_horizon_hi=30)
    out = {}
    for name, kernels in (("triton", TRITON), ("batched", kernels_for("cpu"))):
        capture = RhythmCapture(cfg, model.config.num_hidden_layers, layouts, kernels=kernels)
        with torch.no_grad(), capture_active(capture):
            model(input_ids=ids, position_ids=pos, use_cache=False)
        assert set(capture.paths.values()) == {name}
        out[name] = capture.finalize()
    for a, b in zip(out["triton"], out["batched"], strict=True):
        assert torch.equal(a.local_heads, b.local_heads) and torch.equal(a.global_heads, b.global_heads)
        torch.testing.assert_close(a.waad, b.waad, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.fai, b.fai, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_compiled_for_sm80_and_sm90_with_tensor_cores_and_no_spills():
    """``triton.compile`` for real GPUs in a process without the interpreter; resources read by Triton's cuobjdump."""
    code = (
        "import json\nfrom verl_rhythm.testing.triton_compile import compile_kernel\n"
        "print(json.dumps({f'{n} {a} {d}': compile_kernel(n, a, d) for n in ('rows', 'columns') "
        "for a in (80, 90) for d in (128, 64)}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from verl_rhythm.testing.triton_compile import SHARED_LIMIT

    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 8
    for key, r in results.items():
        arch = int(key.split()[1])
        mma = r["HMMA"] if arch == 80 else r["HGMMA"]
        assert mma > 0, (key, r)  # tensor cores: mma.sync on Ampere, wgmma on Hopper
        assert r["LOCAL"] == 0 and r["STACK"] == 0, (key, r)  # no register spills
        assert r["REG"] <= 255 and r["SHARED"] + r["shared_dynamic"] <= SHARED_LIMIT[arch], (key, r)


@pytest.mark.slow
def test_compiled_for_amd_mi200_and_mi300_with_matrix_cores_and_no_spills():
    """``triton.compile`` for AMD targets (the ROCm GPUs the kernels are the default on: ``kernels.ROCM_ARCHS``); the
    resources are those the ``amdgcn`` assembly declares. Compile-only: no AMD GPU has run them."""
    from verl_rhythm.measure.kernels import ROCM_ARCHS

    code = (
        "import json\nfrom verl_rhythm.testing.triton_compile import compile_kernel_amd\n"
        "print(json.dumps({f'{n} {a} {t}': compile_kernel_amd(n, a, 128, t) for n in ('rows', 'columns') "
        f"for a in {ROCM_ARCHS!r} for t in ('bf16', 'fp32')}}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from verl_rhythm.testing.triton_compile import LDS_LIMIT

    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 4 * len(ROCM_ARCHS)
    for key, r in results.items():
        assert r["MFMA"] > 0, (key, r)  # matrix cores
        assert r["vgpr_spill_count"] == 0 and r["private_segment_fixed_size"] == 0, (key, r)  # no spills to memory
        assert r["vgpr_count"] <= 512 and r["shared"] <= LDS_LIMIT, (key, r)
