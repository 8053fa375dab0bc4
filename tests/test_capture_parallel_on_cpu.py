# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""RhythmCapture split over two gloo processes, as Megatron splits it: by heads (tensor parallelism, the capture's
``group``) and by layers (pipeline parallelism, its ``layer_group``), against one process recording everything.

The same random packed q/k (4 layers, 8 query heads / 2 KV heads, three sequences in one row) are recorded whole by
one capture, and split by two ranks: each rank's statistics must equal the whole capture's (head groups and spans
exactly, WAAD/FAI up to the order of the sums) and each other bit for bit. The Megatron engine itself runs split this
way in ``tests/test_megatron_parallel_on_cpu.py`` (the ``megatron`` environment); this file needs no megatron-core.
"""

import pytest
import torch

from verl_rhythm.config import RhythmConfig
from verl_rhythm.measure.capture import RhythmCapture
from verl_rhythm.measure.layout import SequenceLayout
from verl_rhythm.testing.process_group import spawn_cpu_group

LAYERS, HEADS, KV_HEADS, DIM = 4, 8, 2, 8
LENGTHS = [(5, 8), (9, 4), (3, 12)]
CFG = RhythmConfig(layers=(0, 1, 2, 3), waad_window=4, fai_horizon_lo=2, fai_horizon_hi=8, chunk_size=16)


def inputs():
    """Packed rows of :data:`LENGTHS` (each sequence padded to an even slot) and per layer ``(query, key)``
    ``(1, H, T, D)`` / ``(1, H_kv, T, D)``."""
    layouts, start = [], 0
    for p, r in LENGTHS:
        mask = torch.cat([torch.zeros(p, dtype=torch.bool), torch.ones(r, dtype=torch.bool)])
        mask[p + r // 2] = False  # a hole in the response
        layouts.append(SequenceLayout(row=0, start=start, length=p + r, response_mask=mask))
        start += p + r + (p + r) % 2
    g = torch.Generator().manual_seed(0)
    qk = [(torch.randn(1, HEADS, start, DIM, generator=g), torch.randn(1, KV_HEADS, start, DIM, generator=g))
          for _ in range(LAYERS)]  # fmt: skip
    return layouts, qk


def whole():
    layouts, qk = inputs()
    capture = RhythmCapture(CFG, LAYERS, layouts)
    for layer, (q, k) in enumerate(qk):
        capture.record(layer, q, k, None)
    return capture.finalize()


def split_rank(rank: int, how: str) -> list:
    """One rank's share: ``heads`` (TP: query heads [4r, 4r + 4) and KV head r of every layer), ``layers`` (PP: layers
    [2r, 2r + 2)), or ``overlap`` (both ranks record layer 1: refused)."""
    import torch.distributed as dist

    layouts, qk = inputs()
    world = dist.group.WORLD
    if how == "heads":
        capture = RhythmCapture(CFG, LAYERS, layouts, group=world)
        share = HEADS // 2
        for layer, (q, k) in enumerate(qk):
            capture.record(layer, q[:, rank * share : (rank + 1) * share], k[:, rank : rank + 1], DIM**-0.5)
    else:
        capture = RhythmCapture(CFG, LAYERS, layouts, layer_group=world)
        mine = range(2 * rank, 2 * rank + 2) if how == "layers" else ([0, 1] if rank == 0 else [1, 2, 3])
        for layer in mine:
            capture.record(layer, *qk[layer], None)
    try:
        return capture.finalize()
    except RuntimeError as err:
        return [str(err)]


@pytest.mark.parametrize("how", ["heads", "layers"])
def test_a_split_capture_equals_the_whole_one_on_every_rank(how):
    reference = whole()
    ranks = spawn_cpu_group(2, split_rank, how)
    for got in ranks:
        assert len(got) == len(reference)
        for a, b in zip(got, reference, strict=True):
            assert a.heads == b.heads
            assert torch.equal(a.span, b.span)
            assert torch.equal(a.local_heads, b.local_heads) and torch.equal(a.global_heads, b.global_heads)
            torch.testing.assert_close(a.waad, b.waad, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(a.fai, b.fai, atol=1e-6, rtol=1e-6)
    for a, b in zip(*ranks, strict=True):
        assert torch.equal(a.waad, b.waad) and torch.equal(a.fai, b.fai)


def test_a_layer_recorded_on_two_stages_is_refused_on_both():
    """Layer 1 recorded by both stages: every stage raises, naming it (none is left waiting in a collective)."""
    for (message,) in spawn_cpu_group(2, split_rank, "overlap"):
        assert "{1: 2}" in message and "pipeline stages" in message
