# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Dense reference: hand-computed WAAD, FAI, span and grouping; linearity against literal Eq. 9 / Eq. 10."""

import pytest
import torch

from verl_rhythm.config import select_layers
from verl_rhythm.measure.heads import HeadStats, fai_count, group_heads, head_spans, rhythm_for_sequences
from verl_rhythm.testing.dense import (
    attention_maps_for_sequence,
    head_stats_dense,
    rhythm_dense,
    rhythm_dense_group_maps,
)

# One head, N = 4: position 0 is the prompt, R = {1, 2, 3}.
A = torch.tensor(
    [
        [1.0, 0.0, 0.0, 0.0],
        [0.5, 0.5, 0.0, 0.0],
        [0.2, 0.3, 0.5, 0.0],
        [0.1, 0.2, 0.3, 0.4],
    ]
)[None]
R = torch.tensor([False, True, True, True])


def test_hand_computed_head_statistics():
    s = head_stats_dense(A, R, [(0, 0)], waad_window=2, fai_horizon_lo=1, fai_horizon_hi=2)
    # expected backward distance: row 3 = 0.1*3 + 0.2*2 + 0.3*1
    assert s.dist[0].tolist() == pytest.approx([0, 0.5, 0.7, 1.0])
    # WAAD with W = 2: row 3 = 0.1*min(3, 2) + 0.2*2 + 0.3*1
    assert s.waad[0].tolist() == pytest.approx([0, 0.5, 0.7, 0.9])
    # T(0) = {1, 2}, T(1) = {2, 3}, T(2) = {3}, T(3) = {}
    assert s.fai_count.tolist() == [2, 2, 1, 0]
    assert s.fai_num[0].tolist() == pytest.approx([0.7, 0.5, 0.3, 0.0])
    assert head_spans(s).tolist() == pytest.approx([(0.5 + 0.7 + 1.0) / 3])
    r = rhythm_dense(A, R, [(0, 0)], waad_window=2, fai_horizon_lo=1, fai_horizon_hi=2)
    assert r.fai.tolist() == pytest.approx([0.35, 0.25, 0.3, 0.0])  # 0 where T(s) is empty


def test_fai_excludes_prompt_rows():
    # with R = {3} only, T(1) = {3} (row 2 is not a response row) and T(0) is empty for H_hi = 2
    s = head_stats_dense(A, torch.tensor([False, False, False, True]), [(0, 0)], 10, 1, 2)
    assert s.fai_count.tolist() == [0, 1, 1, 0]
    assert s.fai_num[0].tolist() == pytest.approx([0.0, 0.2, 0.3, 0.0])


def test_grouping_by_span_with_deterministic_ties():
    heads = [(0, 0), (0, 1), (1, 0), (1, 1)]
    span = torch.tensor([3.0, 1.0, 2.0, 1.0])
    local, glob = group_heads(span, heads, 0.3)  # max(1, floor(1.2)) = 1 head per group
    assert local.tolist() == [1] and glob.tolist() == [0]
    local, glob = group_heads(span, heads, 0.5)
    assert local.tolist() == [1, 3]  # tie on span 1.0 -> layer 0 first
    assert glob.tolist() == [2, 0]


def random_causal_maps(k, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(k, n, n, generator=g) * 3
    logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return logits.softmax(-1)


def test_linearity_per_head_average_equals_group_map():
    """WAAD/FAI of per-head vectors averaged over a group == Eq. 9/10 applied to the group-averaged map."""
    n = 40
    attn = random_causal_maps(6, n)
    resp = torch.arange(n) >= 12
    heads = [(layer, h) for layer in range(2) for h in range(3)]
    r = rhythm_dense(attn, resp, heads, waad_window=4, fai_horizon_lo=3, fai_horizon_hi=9, head_quantile=0.34)
    waad, fai = rhythm_dense_group_maps(attn, resp, r.local_heads, r.global_heads, 4, 3, 9)
    assert torch.allclose(r.waad, waad, atol=1e-6)
    assert torch.allclose(r.fai, fai, atol=1e-6)
    assert len(r.local_heads) == len(r.global_heads) == 2
    assert set(r.local_heads.tolist()).isdisjoint(r.global_heads.tolist())
    assert float(r.span[r.local_heads].max()) <= float(r.span[r.global_heads].min())
    assert bool(((r.waad >= 0) & (r.waad <= 4 + 1e-6)).all())


def test_fai_count_matches_definition():
    resp = torch.tensor([0, 0, 1, 1, 0, 1, 1, 1, 1], dtype=torch.bool)
    got = fai_count(resp, 2, 4)
    want = [sum(1 for t in range(s + 2, min(9, s + 5)) if resp[t]) for s in range(9)]
    assert got.tolist() == want


def test_micro_batch_scope_groups_by_mean_span():
    n = 30
    stats = []
    for seed in range(3):
        attn = random_causal_maps(4, n, seed)
        stats.append(head_stats_dense(attn, torch.arange(n) >= 10, [(0, h) for h in range(4)]))
    per_seq = rhythm_for_sequences(stats, 0.25, "sequence")
    shared = rhythm_for_sequences(stats, 0.25, "micro_batch")
    mean_span = torch.stack([head_spans(s) for s in stats]).mean(0)
    assert all(r.local_heads.tolist() == [int(mean_span.argmin())] for r in shared)
    assert [r.local_heads.tolist() for r in per_seq] == [[int(head_spans(s).argmin())] for s in stats]
    with pytest.raises(ValueError, match="head_group_scope"):
        rhythm_for_sequences(stats, 0.25, "batch")


def test_no_response_gives_zero_span_and_zero_fai():
    attn = random_causal_maps(2, 8)
    r = rhythm_dense(attn, torch.zeros(8, dtype=torch.bool), [(0, 0), (0, 1)])
    assert r.span.tolist() == [0.0, 0.0]
    assert r.fai.abs().sum() == 0


def test_shape_errors_name_the_tensor():
    with pytest.raises(ValueError, match="attn must be"):
        head_stats_dense(torch.rand(4, 4), R, [(0, 0)])
    with pytest.raises(ValueError, match="response_mask"):
        head_stats_dense(A, torch.ones(3, dtype=torch.bool), [(0, 0)])
    with pytest.raises(ValueError, match="at least one"):
        HeadStats.concat([])


def test_dense_reference_on_a_real_model_with_padding():
    """Eager maps of a tiny Llama (GQA) with a left-padded row: cutting the sequence out gives rows summing to 1,
    and the statistic is the same as for the unpadded sequence alone."""
    from models import tiny_model

    model = tiny_model("llama_gqa", num_layers=6)
    ids = torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(0))
    layers = select_layers(6)
    assert layers == [2, 3, 4]
    resp = torch.arange(24) >= 9
    with torch.no_grad():
        alone = model(ids, output_attentions=True).attentions
        pad = 5
        padded_ids = torch.cat([torch.zeros(1, pad, dtype=torch.long), ids], dim=1)
        am = torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones(1, 24, dtype=torch.long)], dim=1)
        pos = (am.cumsum(-1) - 1).clamp_min(0)
        padded = model(padded_ids, attention_mask=am, position_ids=pos, output_attentions=True).attentions
    maps_a, heads = attention_maps_for_sequence(alone, layers, 0, torch.arange(24))
    maps_p, heads_p = attention_maps_for_sequence(padded, layers, 0, torch.arange(pad, pad + 24))
    assert heads == heads_p and len(heads) == 3 * 8
    assert torch.allclose(maps_a.sum(-1), torch.ones(24, 24), atol=1e-5)
    ra, rp = rhythm_dense(maps_a, resp, heads), rhythm_dense(maps_p, resp, heads)
    assert torch.allclose(ra.waad, rp.waad, atol=1e-5) and torch.allclose(ra.fai, rp.fai, atol=1e-5)
