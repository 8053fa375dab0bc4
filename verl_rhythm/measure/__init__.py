# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Measure room: per-token attention statistics (head span, WAAD, FAI) from post-RoPE q/k, without N×N maps.

From the bottom up:

- :mod:`.settings`: :class:`CaptureSettings`, the capture's ``algorithm.rhythm.*`` keys, and the layer choice.
- :mod:`.heads`: the per-head statistic containers and the shared aggregation (spans, head groups, WAAD/FAI).
- :mod:`.logits`: the exact fp32 context and the attention logits/probabilities every path shares.
- :mod:`.layout`: where the sequences lie (:class:`SequenceLayout`, its builders, the grids of similar lengths).
- :mod:`.kernels`: which device kernels run (:class:`~verl_rhythm.measure.kernels.Kernels`), by capability checks.
- :mod:`.batched`: the statistics of one layer for a whole micro-batch (the product path), no host sync;
  :mod:`.triton_stats`: the same as two fused Triton kernels (CUDA); :mod:`.fused`: the full-row statistics out of
  the layer's own SDPA call (fp32).
- :mod:`.capture`: :class:`RhythmCapture`, which collects the selected layers of one forward.
- :mod:`.hook`: wraps transformers' attention functions so a forward feeds a :class:`RhythmCapture`.

The references these paths are tested against (dense maps, one sequence at a time) live with the test harnesses
(:mod:`verl_rhythm.testing.dense`, :mod:`verl_rhythm.testing.chunked`). Names are imported on first use, so
``from verl_rhythm.measure.settings import CaptureSettings`` stays free of torch.
"""

from verl_rhythm.lazy import exports

__all__, __getattr__ = exports(
    __name__,
    {
        "CaptureSettings": "settings",
        "select_layers": "settings",
        "HeadStats": "heads",
        "SequenceRhythm": "heads",
        "group_heads": "heads",
        "head_spans": "heads",
        "rhythm_for_sequences": "heads",
        "rhythm_from_head_stats": "heads",
        "SequenceLayout": "layout",
        "layouts_from_attention_mask": "layout",
        "layouts_from_position_ids": "layout",
        "RhythmCapture": "capture",
        "capture_active": "hook",
        "install_attention_hook": "hook",
    },
)
