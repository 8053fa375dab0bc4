# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The batched capture's memory follows the micro-batch's tokens, not its longest sequence.

RL response lengths are long-tailed: one long sequence packed with many short ones must not pad every sequence to
the long one. The largest tensor the capture allocates while it records a layer (every allocation listed by a
``TorchDispatchMode``) is compared for micro-batches of equal and of mixed lengths with the same number of tokens:
on CPU tensors with this machine's kernel choices, and on ``meta`` tensors at Qwen3-8B's heads with a CUDA GPU's
(bf16 grid, tiled bands; ``benchmarks/capture_memory.py``). The statistics of mixed lengths stay exact.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from test_capture_batched_on_cpu import dense_reference, packed_layouts, random_qk

from verl_rhythm.config import RhythmConfig
from verl_rhythm.measure.capture import RhythmCapture
from verl_rhythm.measure.layout import GRID_FLOOR, BatchLayout
from verl_rhythm.testing.ops import AllocationCounter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.capture_memory import parse_batch, record_one_layer  # noqa: E402


def _largest_cpu(lengths, heads=4, kv_heads=2, dim=16):
    layouts = packed_layouts(lengths, [n // 4 for n in lengths])
    q, k = random_qk(1, heads, kv_heads, sum(lengths), dim, seed=len(lengths))
    capture = RhythmCapture(RhythmConfig(layers=(0,), chunk_size=64), 1, layouts, fused=False)
    capture.to("cpu")
    with AllocationCounter() as counter:
        capture.record(0, q, k, dim**-0.5)
    return counter.largest, capture, q, k, layouts


@pytest.mark.parametrize("mixed", ["1x2048+32x64", "1x3000+1x1000+96x1", "2x1024+64x32"])
def test_mixed_lengths_allocate_at_most_twice_what_equal_lengths_do_on_cpu(mixed):
    equal, *_ = _largest_cpu(parse_batch("16x256"))
    lengths = parse_batch(mixed)
    assert sum(lengths) == 4096
    largest, capture, q, k, layouts = _largest_cpu(lengths)
    assert largest <= 2 * equal, (largest, equal)
    cfg = capture.cfg
    for layout, got in zip(layouts[:3], capture.head_stats()[:3], strict=True):  # and still exact
        ref, zmax = dense_reference(q, k, 16**-0.5, layout, cfg.waad_window, cfg.fai_horizon_lo, cfg.fai_horizon_hi)
        torch.testing.assert_close(got.waad, ref.waad, atol=1e-5 + 1e-6 * zmax, rtol=0)
        torch.testing.assert_close(got.fai_num, ref.fai_num, atol=1e-5 + 1e-6 * zmax, rtol=0)


def test_qwen3_8b_heads_on_meta_long_tail_costs_no_more_than_equal_lengths():
    """1 × 8K + 30 × 540 tokens (verl's 8K recipes pack such micro-batches): the old padded grid allocated 1.9 GiB
    per tensor; now no allocation is above twice that of equal lengths at the same token count."""
    cfg = RhythmConfig(layers=(0,))
    largest = {}
    for spec in ("24x1016", "1x8192+30x540"):
        lengths = parse_batch(spec)
        counter, _ = record_one_layer(lengths, 32, 8, 128, cfg)
        assert counter.syncs == []
        largest[spec] = counter.largest
    assert sum(parse_batch("24x1016")) == 24384 and sum(parse_batch("1x8192+30x540")) == 24392
    assert largest["1x8192+30x540"] <= 2 * largest["24x1016"], largest
    assert largest["1x8192+30x540"] < 2**30  # the logits budget of one chunk, well under the old 1.9 GiB


def test_grids_pad_to_at_most_twice_their_tokens():
    lengths = [8192, 3000, 2999, 1500, 700, 640, *[540] * 30, *[7] * 50, 1]
    layouts = packed_layouts(lengths, [0] * len(lengths))
    lay = BatchLayout(layouts, 10, 100, 64)
    assert [g.first for g in lay.grids] == [0, *[g.stop for g in lay.grids[:-1]]] and lay.grids[-1].stop == len(lengths)
    for grid in lay.grids:
        padded = (grid.stop - grid.first) * grid.max_len
        assert padded <= max(2 * grid.tokens, GRID_FLOOR), (grid.first, grid.stop, padded, grid.tokens)
        assert grid.lengths == sorted(grid.lengths, reverse=True)
    assert sum(g.tokens for g in lay.grids) == lay.tokens == sum(lengths)
    assert BatchLayout(packed_layouts([100] * 16, [0] * 16), 10, 100, 64).grids[0].stop == 16  # equal: one grid
