# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The capture stays fp32 and O(N) in memory whatever the process set.

- fp32 guard: torch's newer ``fp32_precision`` API (set by a process, or by ``set_float32_matmul_precision``) must
  neither break the guard (reading the legacy ``allow_tf32`` after the new API was used raises in torch) nor lower
  the capture's matmuls to TF32 / bf16; the process's setting is restored.
- fused path: it never allocates more than the stock SDPA call it replaces: no S×S tensor for an additive mask, and
  for a bool mask (which stock SDPA on CPU converts to an S×S float mask itself) nothing larger than that mask.
"""

from __future__ import annotations

import torch
from test_capture_batched_on_cpu import packed_layouts, random_qk
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from verl_rhythm.config import RhythmConfig
from verl_rhythm.measure import fused
from verl_rhythm.measure.capture import RhythmCapture, SequenceLayout
from verl_rhythm.measure.logits import exact_fp32
from verl_rhythm.testing.ops import AllocationCounter


def _stats(cfg, layouts, q, k):
    capture = RhythmCapture(cfg, 1, layouts)
    capture.record(0, q, k, 0.3)
    return capture.finalize()


def test_guard_works_with_the_new_fp32_precision_api():
    cuda, cpu = torch.backends.cuda.matmul, torch.backends.mkldnn.matmul
    saved = (cuda.fp32_precision, cpu.fp32_precision, torch.get_float32_matmul_precision())
    try:
        cuda.fp32_precision = "tf32"  # a process on the new API: the legacy allow_tf32 now raises when read
        torch.set_float32_matmul_precision("medium")  # oneDNN: bf16 for fp32 matmuls on CPU
        assert cpu.fp32_precision == "bf16"
        for device in ("cuda", "cpu"):  # the cuda flags exist without a GPU
            with exact_fp32(torch.device(device)):
                assert (cuda if device == "cuda" else cpu).fp32_precision == "ieee"
                if device == "cuda":  # bf16 gemms with fp32 output reduce in fp32 too
                    assert cuda.allow_bf16_reduced_precision_reduction is False
        assert (cuda.fp32_precision, cpu.fp32_precision) == ("tf32", "bf16")
        cfg = RhythmConfig(layers=(0,), chunk_size=16)
        layouts = packed_layouts([40, 25], [10, 5])
        q, k = random_qk(1, 4, 2, 65, 16, seed=3)
        lowered = _stats(cfg, layouts, q, k)
    finally:
        cuda.fp32_precision, cpu.fp32_precision = saved[0], saved[1]
        torch.set_float32_matmul_precision(saved[2])
    plain = _stats(cfg, layouts, q, k)
    for a, b in zip(lowered, plain, strict=True):
        assert torch.equal(a.waad, b.waad) and torch.equal(a.fai, b.fai)


def test_guard_keeps_a_legacy_setting_readable():
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    try:
        matmul.allow_tf32 = True
        with exact_fp32(torch.device("cuda")):
            assert matmul.fp32_precision == "ieee"
        assert matmul.allow_tf32 is True  # reading the legacy flag still works afterwards
    finally:
        matmul.fp32_precision = saved


def _module():
    module = torch.nn.Module()
    module.is_causal, module.layer_idx = True, 0
    return module


def _packed_call(s=256, h=2, d=16):
    q, k = random_qk(1, h, h, s, d, seed=1)
    v = torch.randn(1, h, s, d)
    layouts = [SequenceLayout(0, 0, 200, torch.arange(200) >= 50), SequenceLayout(0, 200, 56, torch.ones(56) > 0)]
    capture = RhythmCapture(RhythmConfig(layers=(0,), chunk_size=64), 1, layouts)
    block = torch.zeros(s, s, dtype=torch.bool)
    block[:200, :200] = True
    block[200:, 200:] = True
    bool_mask = (block & torch.ones(s, s, dtype=torch.bool).tril())[None, None]
    return capture, q, k, v, bool_mask


def test_fused_path_with_an_additive_mask_builds_no_square_tensor():
    capture, q, k, v, bool_mask = _packed_call()
    s, d = q.shape[2], q.shape[3]
    float_mask = torch.zeros(1, 1, s, s).masked_fill_(~bool_mask, float("-inf"))
    with AllocationCounter() as sizes:
        result = fused.attention_with_stats(sdpa_attention_forward, capture, _module(), q, k, v, float_mask)
    assert result is not None and sizes.largest_float < s * s, sizes.largest_float  # q/k/v copies are O(S), never S²
    (out, _), lse, dist, leak = result
    stock = sdpa_attention_forward(_module(), q, k, v, float_mask, scaling=d**-0.5)[0]
    torch.testing.assert_close(out, stock, atol=1e-6, rtol=1e-6)
    assert not bool(leak)


def test_fused_path_with_a_bool_mask_allocates_no_more_than_stock_sdpa():
    """A packed row under SDPA (transformers' bool block-causal mask, verl's remove-padding layout) takes the fused
    path on CPU: stock SDPA converts the bool mask to an S×S float mask itself, the fused call converts it once
    instead, and allocates nothing larger."""
    capture, q, k, v, bool_mask = _packed_call()
    d = q.shape[3]
    with AllocationCounter() as stock_sizes:
        stock = sdpa_attention_forward(_module(), q, k, v, bool_mask, scaling=d**-0.5)[0]
    with AllocationCounter() as sizes:
        result = fused.attention_with_stats(sdpa_attention_forward, capture, _module(), q, k, v, bool_mask)
    assert result is not None
    assert stock_sizes.largest_float >= bool_mask.numel()  # the stock call builds the S×S float mask
    assert sizes.largest_float <= stock_sizes.largest_float, (sizes.largest_float, stock_sizes.largest_float)
    (out, _), lse, dist, leak = result
    torch.testing.assert_close(out, stock, atol=1e-6, rtol=1e-6)
    assert not bool(leak)
    # and its statistics are the batched path's (full rows from the kernel instead of a second pass)
    capture.record(0, q, k, d**-0.5, lse=lse, dist=dist, leak=leak)
    got = capture.finalize()
    ref = RhythmCapture(capture.cfg, 1, capture.layouts, fused=False)
    ref.record(0, q, k, d**-0.5, attention_mask=bool_mask)
    for a, b in zip(got, ref.finalize(), strict=True):
        torch.testing.assert_close(a.waad, b.waad, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.fai, b.fai, atol=1e-5, rtol=0)
