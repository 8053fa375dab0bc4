# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Dense reference: hand-computed WAAD, FAI, span, grouping and layer choice; linearity of the per-head vectors
against Eq. 9 / Eq. 10 on the group-averaged maps; and the reference imports nothing of the product."""

import ast
import pathlib

import pytest
import torch

from verl_rhythm.measure.heads import HeadStats
from verl_rhythm.testing import credit_ref, dense
from verl_rhythm.testing.dense import (
    attention_maps_for_sequence,
    fai_count,
    group_heads,
    group_size,
    head_spans,
    head_stats_dense,
    rhythm_dense,
    rhythm_dense_group_maps,
    rhythm_for_sequences,
    select_layers,
)


@pytest.mark.parametrize("module", [dense, credit_ref], ids=["dense", "credit_ref"])
def test_the_references_import_nothing_of_the_product(module):
    """``testing/dense.py`` and ``testing/credit_ref.py`` are written from the spec alone: torch and the standard
    library, no ``verl_rhythm``."""
    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import from {node.module!r} in {module.__name__}"
            imported.append(node.module or "")
    assert imported, "no import found: the AST walk is broken"
    allowed = {"__future__", "math", "dataclasses", "fractions", "typing", "torch"}
    assert {name.split(".")[0] for name in imported} <= allowed, imported


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
    assert head_spans(A, R).tolist() == pytest.approx([(0.5 + 0.7 + 1.0) / 3])
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
    assert local == [1] and glob == [0]
    local, glob = group_heads(span, heads, 0.5)
    assert local == [1, 3]  # tie on span 1.0 -> layer 0 first
    assert glob == [2, 0]


@pytest.mark.parametrize(
    ("k", "q", "g"), [(10, 0.3, 3), (12, 0.3, 3), (3, 0.3, 1), (1, 0.5, 1), (20, 0.35, 7), (7, 0.5, 3), (24, 0.3, 7)]
)
def test_group_size_is_floor_of_the_share(k, q, g):
    assert group_size(k, q) == g


@pytest.mark.parametrize(
    ("layers", "want"),
    [(1, [0]), (2, [0, 1]), (3, [1, 2]), (6, [2, 3, 4]), (24, [8, 10, 12, 14, 16]), (28, [9, 11, 14, 16, 18]),
     (30, [10, 12, 15, 18, 20]), (36, [12, 15, 18, 21, 24])],
)  # fmt: skip
def test_layer_choice_is_five_rounded_points_of_the_middle_third(layers, want):
    """round(linspace(L // 3, 2 L // 3, 5)), halves to even (13.5 -> 14, 12.5 -> 12, 17.5 -> 18), de-duplicated."""
    assert select_layers(layers) == want


def test_layer_choice_counts_only_softmax_layers_and_keeps_explicit_lists():
    hybrid = ["linear_attention"] * 3 + ["full_attention"]
    # softmax layers [3, 7, 11, 15]: M = 4 -> points 1, 1.25, 1.5, 1.75, 2 -> indices {1, 2} -> layers 7, 11
    assert select_layers(16, None, hybrid * 4) == [7, 11]
    assert select_layers(6, None, ["sliding_attention", "full_attention"] * 3) == [2, 3, 4]
    assert select_layers(6, (4, 1, 4)) == [1, 4]


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
    assert torch.equal(r.waad, waad) and torch.equal(r.fai, fai)
    s = head_stats_dense(attn, resp, heads, 4, 3, 9)
    per_head_waad = s.waad[r.local_heads].mean(0)
    per_head_fai = s.fai_num[r.global_heads].mean(0) / s.fai_count.clamp_min(1)
    assert torch.allclose(per_head_waad, r.waad, atol=1e-6)
    assert torch.allclose(per_head_fai, r.fai, atol=1e-6)
    assert len(r.local_heads) == len(r.global_heads) == 2
    assert set(r.local_heads.tolist()).isdisjoint(r.global_heads.tolist())
    assert float(r.span[r.local_heads].max()) <= float(r.span[r.global_heads].min())
    assert bool(((r.waad >= 0) & (r.waad <= 4 + 1e-6)).all())


def test_fai_count_by_hand():
    resp = torch.tensor([0, 0, 1, 1, 0, 1, 1, 1, 1], dtype=torch.bool)
    # T(s) = response rows in [s + 2, s + 4]: s=0 -> {2, 3}, s=1 -> {3, 5}, s=2 -> {5, 6}, s=3 -> {5, 6, 7},
    # s=4 -> {6, 7, 8}, s=5 -> {7, 8}, s=6 -> {8}, s=7, 8 -> {}
    assert fai_count(resp, 2, 4).tolist() == [2, 2, 2, 3, 3, 2, 1, 0, 0]


class Settings:
    """Plain settings object (the reference reads attributes only)."""

    def __init__(self, scope):
        self.waad_window, self.fai_horizon_lo, self.fai_horizon_hi = 10, 10, 100
        self.head_quantile, self.head_group_scope = 0.25, scope


def test_micro_batch_scope_groups_by_mean_span():
    n = 30
    maps = [random_causal_maps(4, n, seed) for seed in range(3)]
    masks = [torch.arange(n) >= 10] * 3
    heads = [(0, h) for h in range(4)]
    per_seq = rhythm_for_sequences(maps, masks, heads, Settings("sequence"))
    shared = rhythm_for_sequences(maps, masks, heads, Settings("micro_batch"))
    mean_span = torch.stack([head_spans(m, r) for m, r in zip(maps, masks, strict=True)]).mean(0)
    assert all(r.local_heads.tolist() == [int(mean_span.argmin())] for r in shared)
    own = [[int(head_spans(m, r).argmin())] for m, r in zip(maps, masks, strict=True)]
    assert [r.local_heads.tolist() for r in per_seq] == own
    with pytest.raises(ValueError, match="head_group_scope"):
        rhythm_for_sequences(maps, masks, heads, Settings("batch"))


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
    with pytest.raises(ValueError, match="heads lists"):
        head_stats_dense(A, R, [(0, 0), (0, 1)])
    with pytest.raises(ValueError, match="at least one"):  # the product's container
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
