# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Measure room: per-token attention statistics (head span, WAAD, FAI) from attention, without N×N maps.

- :mod:`.heads`: the per-head statistic container and the shared aggregation (spans, groups, WAAD/FAI).
- :mod:`.dense`: the dense reference from full maps (ground truth for tests and the analysis tool).
- :mod:`.layout`: where the sequences lie (:class:`SequenceLayout`, its builders, the batched index tensors).
- :mod:`.chunked`: the per-sequence reference path from post-RoPE q/k (readable, one sequence at a time).
- :mod:`.batched`: the path training uses, one computation per layer and grid of similar lengths, no host sync.
- :mod:`.kernels`: which device kernels run (:class:`~verl_rhythm.measure.kernels.Kernels`), by capability checks.
- :mod:`.fused`: the full-row statistics out of the layer's own SDPA call (fp32), bands from :mod:`.batched`.
- :mod:`.capture`: :class:`RhythmCapture`, which collects the selected layers of one forward and picks the path.
- :mod:`.hook`: wraps transformers' attention functions so a forward feeds a :class:`RhythmCapture`.
"""

from verl_rhythm.measure.capture import RhythmCapture
from verl_rhythm.measure.chunked import layer_head_stats
from verl_rhythm.measure.heads import (
    HeadStats,
    SequenceRhythm,
    group_heads,
    head_spans,
    rhythm_for_sequences,
    rhythm_from_head_stats,
)
from verl_rhythm.measure.hook import capture_active, install_attention_hook
from verl_rhythm.measure.layout import SequenceLayout, layouts_from_attention_mask, layouts_from_position_ids

__all__ = [
    "HeadStats",
    "RhythmCapture",
    "SequenceLayout",
    "SequenceRhythm",
    "capture_active",
    "group_heads",
    "head_spans",
    "install_attention_hook",
    "layer_head_stats",
    "layouts_from_attention_mask",
    "layouts_from_position_ids",
    "rhythm_for_sequences",
    "rhythm_from_head_stats",
]
