# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Credit on multi-turn responses: tool-output tokens sit inside the response with response_mask = 0 (verl's agent
loop), splitting it into assistant segments. ΔWAAD and the coupled look-back stay inside a segment; TopQ shares and
the WAAD median stay per response. Checked against a per-segment reference written here straight from the spec."""

import math

import pytest
import torch

from verl_rhythm.credit import compute_gamma, segment_ids

STRATEGIES = ("local", "global", "coupled", "bottom", "uniform", "none")


def reference(mask, waad, fai, strategy, top_q=0.4, gamma_amp=1.5, alpha=0.5, intro_window=3, bottom_score="global"):
    """γ, Δ, dominated and intro counts of ONE response, by loops over its segments (docs/method.md Sec. 4).

    Args:
        mask, waad, fai: lists of length T in the original layout (holes and padding: mask 0).

    Returns:
        ``(gamma, delta, dominated, intro)``, lists of length T.
    """
    size = len(mask)
    idx = [p for p in range(size) if mask[p]]
    segments = []
    for p in idx:
        if segments and segments[-1][-1] == p - 1:
            segments[-1].append(p)
        else:
            segments.append([p])
    delta = [0.0] * size
    for seg in segments:
        for j, p in enumerate(seg[:-1]):
            delta[p] = abs(waad[p] - waad[seg[j + 1]])
    gamma, dominated, intro = [1.0] * size, [False] * size, [0] * size
    n = len(idx)
    if n < 2:
        return gamma, delta, dominated, intro

    def top(score):
        k = math.ceil(top_q * n - 1e-9)
        return set(sorted(idx, key=lambda p: (-score[p], p))[:k])

    bonus = gamma_amp - 1.0
    if strategy == "local":
        picked = top(delta)
    elif strategy == "global":
        picked = top(fai)
    elif strategy == "bottom":
        score = delta if bottom_score == "local" else fai
        picked = top([-x for x in score])
    elif strategy == "uniform":
        picked = set(idx)
    elif strategy == "none":
        picked = set()
    else:  # coupled
        preplan, anchors = top(delta), top(fai)
        tau_waad = sorted(waad[p] for p in idx)[(n - 1) // 2]
        tau_delta = min(delta[p] for p in preplan)
        for t in sorted(anchors):
            seg = next(s for s in segments if t in s)
            j = seg.index(t)
            window = seg[max(0, j - intro_window) : j]
            best = max((delta[u] for u in window), default=None)
            if window and waad[t] <= tau_waad and best >= tau_delta:
                dominated[t] = True
                intro[next(u for u in window if delta[u] == best)] += 1
        for p in idx:
            in_anchor = p in anchors
            gamma[p] = (
                1.0
                + bonus * (in_anchor and not dominated[p])
                + (1 - alpha) * bonus * dominated[p]
                + alpha * bonus * intro[p]
            )
        return gamma, delta, dominated, intro
    for p in picked:
        gamma[p] = 1.0 + bonus
    return gamma, delta, dominated, intro


def multiturn_batch(gen, b=6, t=40, single_turn=False):
    """Random rows in verl's response layout: turns of assistant tokens with tool-output holes between them, right
    padding; WAAD on a quarter grid (exact in fp32, with ties) and FAI on a coarse grid (ties)."""
    mask = torch.zeros(b, t, dtype=torch.bool)
    for i in range(b):
        p = 0
        for _turn in range(1 if single_turn else int(torch.randint(1, 5, (1,), generator=gen))):
            if not single_turn:
                p += int(torch.randint(0, 4, (1,), generator=gen))  # tool output (or none before the first turn)
            n = int(torch.randint(0, 9, (1,), generator=gen))
            mask[i, p : p + n] = True
            p += n
    waad = torch.randint(0, 41, (b, t), generator=gen).float() / 4
    fai = torch.randint(0, 6, (b, t), generator=gen).float() / 5
    return mask, waad, fai


def segments_of(row_mask):
    idx = row_mask.nonzero().flatten().tolist()
    out = []
    for p in idx:
        if out and out[-1][-1] == p - 1:
            out[-1].append(p)
        else:
            out.append([p])
    return out


def test_segment_ids_number_the_runs_of_the_mask():
    mask = torch.tensor([[0, 1, 1, 0, 0, 1, 0, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]]).bool()
    assert segment_ids(mask).tolist() == [[-1, 0, 0, -1, -1, 1, -1, 2, 2, -1], [0, 0, 0, 0, -1, -1, -1, -1, -1, -1]]


@pytest.mark.parametrize("seed", range(4))
def test_delta_of_a_row_with_holes_is_that_of_its_segments_computed_separately(seed):
    mask, waad, _ = multiturn_batch(torch.Generator().manual_seed(seed))
    delta = compute_gamma("local", mask, waad=waad).delta
    checked = 0
    for i in range(mask.shape[0]):
        for seg in segments_of(mask[i]):
            alone = torch.zeros_like(mask[i : i + 1])
            alone[0, seg] = True
            assert torch.equal(delta[i, seg], compute_gamma("local", alone, waad=waad[i : i + 1]).delta[0, seg])
            checked += len(seg) > 1
    assert checked > 0


def test_the_token_before_a_hole_is_not_picked_for_a_jump_across_the_hole():
    # turn 1 at WAAD ~1, tool output, turn 2 at WAAD ~6: the only large |WAAD_t - WAAD_t+1| between valid tokens is
    # across the hole (position 5 -> 9); within the turns Δ is 0.25 or 0.5
    w1 = [1.0, 1.25, 1.0, 1.5, 1.0, 1.25]
    w2 = [6.0, 6.5, 6.0, 6.25, 6.0, 6.5]
    tool = [3.0, 3.0, 3.0]
    waad = torch.tensor([w1 + tool + w2])
    mask = torch.tensor([[True] * 6 + [False] * 3 + [True] * 6])
    c = compute_gamma("local", mask, waad=waad)
    assert c.delta[0, 5] == 0 and not c.preplan[0, 5] and c.gamma[0, 5] == 1
    assert c.delta[0].max() == 0.5
    # the same assistant tokens as one turn: position 5 is the top jump (Δ = 4.75), so the setup would show a leak
    single = compute_gamma("local", torch.ones(1, 12, dtype=torch.bool), waad=torch.tensor([w1 + w2]))
    assert single.delta[0, 5] == 4.75 and single.preplan[0, 5]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gamma_is_one_on_tool_tokens(strategy):
    mask, waad, fai = multiturn_batch(torch.Generator().manual_seed(7))
    entropy = torch.rand(mask.shape, generator=torch.Generator().manual_seed(8))
    c = compute_gamma(strategy, mask, waad=waad, fai=fai, entropy=entropy, bottom_score="local")
    hole = ~mask
    assert torch.all(c.gamma[hole] == 1) and torch.all(c.delta[hole] == 0) and torch.all(c.intro[hole] == 0)
    for name in ("selected", "preplan", "anchor", "dominated"):
        assert not getattr(c, name)[hole].any(), name
    if strategy != "none":
        assert torch.any(c.gamma[mask] > 1)


def test_the_coupled_look_back_stops_at_the_segment_start():
    # positions: turn 1 = 0..4 (a big within-turn jump, Δ_2 = Δ_3 = 7), tool output = 5..6, turn 2 = 7..14
    turn1, turn2 = [2.0, 2.5, 2.0, 9.0, 2.0], [1.0, 1.25, 4.0, 1.0, 4.0, 1.0, 4.0, 1.0]
    waad = torch.tensor([turn1 + [5.0, 5.0] + turn2])
    fai = torch.zeros(1, 15)
    fai[0, [7, 8, 14, 13, 12, 11]] = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]]).bool()
    c = compute_gamma("coupled", mask, waad=waad, fai=fai)
    # Δ = [.5, .5, 7, 7, 0 | .25, 2.75, 3, 3, 3, 3, 3, 0]: TopQ (k = 6) = {2, 3, 9, 10, 11, 12}, τ_Δ = 3; τ_waad = 2.
    # Anchor 7 opens turn 2 (empty window: never dominated); anchor 8's window is {7} (Δ = 0.25 < τ_Δ). Anchors 12
    # and 14 are dominated within turn 2 (intro 9 and 11).
    assert c.anchor[0].nonzero().flatten().tolist() == [7, 8, 11, 12, 13, 14]
    assert c.dominated[0].nonzero().flatten().tolist() == [12, 14]
    assert c.intro[0].nonzero().flatten().tolist() == [9, 11] and c.intro[0, :5].sum() == 0
    assert c.gamma[0, 7] == 1.5 and c.gamma[0, 8] == 1.5
    # the same assistant tokens as one turn: both anchors reach back to turn 1's jump (intro 2 and 3)
    keep = [*range(5), *range(7, 15)]
    joined = compute_gamma("coupled", mask[:, keep], waad=waad[:, keep], fai=fai[:, keep])
    assert joined.dominated[0, 5] and joined.dominated[0, 6] and joined.intro[0, 2:4].tolist() == [1, 1]


@pytest.mark.parametrize("seed", range(3))
def test_every_intro_token_is_in_its_anchors_segment(seed):
    mask, waad, fai = multiturn_batch(torch.Generator().manual_seed(100 + seed), b=32)
    for k in (1, 2, 3, 5):
        c = compute_gamma("coupled", mask, waad=waad, fai=fai, intro_window=k)
        seg = segment_ids(mask)
        for i in range(mask.shape[0]):
            anchors_segs = {int(seg[i, p]) for p in c.dominated[i].nonzero().flatten()}
            intro_segs = {int(seg[i, p]) for p in c.intro[i].nonzero().flatten()}
            assert intro_segs <= anchors_segs
            for p in c.dominated[i].nonzero().flatten().tolist():  # never the first token of its segment
                assert p > 0 and mask[i, p - 1]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("single_turn", [False, True], ids=["multi_turn", "single_turn"])
def test_random_batches_match_the_per_segment_reference(seed, single_turn):
    """Multi-turn rows against the per-segment reference; single-turn rows (one segment: the reference is then the
    pre-segment spec, Δ over consecutive valid tokens, window clipped at the response start) are unchanged."""
    gen = torch.Generator().manual_seed(seed)
    mask, waad, fai = multiturn_batch(gen, b=8, t=36, single_turn=single_turn)
    if single_turn:  # move each response anywhere in its row (left padding too)
        shift = torch.randint(0, 10, (mask.shape[0],), generator=gen)
        mask = torch.stack([torch.roll(m, int(s)) for m, s in zip(mask, shift, strict=True)])
        assert all(len(segments_of(m)) <= 1 for m in mask)
    for top_q in (0.25, 0.4, 0.7):
        for k in (1, 3, 4):
            for strategy in STRATEGIES:
                knobs = dict(top_q=top_q, intro_window=k, bottom_score="local" if seed % 2 else "global")
                c = compute_gamma(strategy, mask, waad=waad, fai=fai, **knobs)
                for i in range(mask.shape[0]):
                    gamma, delta, dominated, intro = reference(
                        mask[i].tolist(), waad[i].tolist(), fai[i].tolist(), strategy, **knobs
                    )
                    where = f"{strategy} q={top_q} k={k} row {i}"
                    assert c.delta[i].tolist() == delta, where
                    assert c.gamma[i].tolist() == pytest.approx(gamma, abs=1e-6), where
                    assert c.dominated[i].tolist() == dominated, where
                    assert c.intro[i].tolist() == intro, where
