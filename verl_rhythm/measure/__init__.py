"""Measure room: per-token attention statistics (head span, WAAD, FAI) from attention, without N×N maps.

- :mod:`.heads`: the per-head statistic container and the shared aggregation (spans, groups, WAAD/FAI).
- :mod:`.dense`: the dense reference from full maps (ground truth for tests and the analysis tool).
- :mod:`.capture`: the exact chunked path from post-RoPE q/k that training uses.
"""

from verl_rhythm.measure.heads import HeadStats, SequenceRhythm, group_heads, head_spans, rhythm_from_head_stats

__all__ = ["HeadStats", "SequenceRhythm", "group_heads", "head_spans", "rhythm_from_head_stats"]
