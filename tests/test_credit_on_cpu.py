# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Credit core: hand-computed cases for each strategy and control, and properties over random batches."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_rhythm.credit import apply_gamma, compute_gamma, top_q_mask

T = torch.tensor


def one(x):
    """A single response as a (1, n) batch with a full mask."""
    x = T(x, dtype=torch.float32)[None]
    return x, torch.ones_like(x, dtype=torch.bool)


# ----------------------------------------------------------------------------------------------- hand-computed
# WAAD = [1, 5, 2, 2, 8, 3] -> ΔWAAD = [4, 3, 0, 6, 5, 0]; q = 0.4, n = 6 -> k = ceil(2.4) = 3 -> {3, 4, 0}
def test_local_strategy_amplifies_top_delta_waad():
    waad, mask = one([1, 5, 2, 2, 8, 3])
    c = compute_gamma("local", mask, waad=waad)
    assert c.delta[0].tolist() == [4, 3, 0, 6, 5, 0]
    assert c.gamma[0].tolist() == [1.5, 1, 1, 1.5, 1.5, 1]
    assert c.selected[0].tolist() == [True, False, False, True, True, False]


# n = 5 -> k = ceil(0.4 * 5) = 2: the 0.5, then the earliest of the tied 0.2s
def test_global_strategy_ties_go_to_the_earlier_position():
    fai, mask = one([0.2, 0.5, 0.2, 0.2, 0.1])
    c = compute_gamma("global", mask, fai=fai)
    assert c.gamma[0].tolist() == [1.5, 1.5, 1, 1, 1]


def test_top_q_count_is_exact_for_float_products():
    # 0.7 * 10 = 7.000000000000001 in floating point: k must still be 7, not 8
    score = torch.arange(10.0)[None]
    assert int(top_q_mask(score, torch.ones_like(score, dtype=torch.bool), 0.7).sum()) == 7
    assert int(top_q_mask(score, torch.ones_like(score, dtype=torch.bool), 0.4).sum()) == 4


# WAAD  = [5, 1, 9, 2, 2, 3, 8, 1, 4, 4]
# Δ     = [4, 8, 7, 0, 1, 5, 7, 3, 0, 0]; TopQ(Δ, 0.4) = {1, 2, 6, 5} -> τ_Δ = 5
# τ_waad = lower median of WAAD = sorted[(10 - 1) // 2] = 3
# FAI anchors (top 4) = {3, 4, 7, 9}
#   t=3: WAAD 2 <= 3, window Δ[0..2] = [4, 8, 7], max 8 >= 5 -> dominated, intro = 1
#   t=4: WAAD 2 <= 3, window Δ[1..3] = [8, 7, 0]             -> dominated, intro = 1
#   t=7: WAAD 1 <= 3, window Δ[4..6] = [1, 5, 7]             -> dominated, intro = 6
#   t=9: WAAD 4 >  3                                          -> plain anchor
# γ: plain anchor 1.5; dominated 1 + (1-α)·0.5 = 1.25; intro 1 + α·0.5 per anchor: t=1 twice -> 1.5, t=6 -> 1.25
COUPLED_WAAD = [5, 1, 9, 2, 2, 3, 8, 1, 4, 4]


def test_coupled_dominated_anchors_and_their_introductory_tokens():
    waad, mask = one(COUPLED_WAAD)
    fai, _ = one([0, 0, 0, 0.9, 0.8, 0, 0, 0.7, 0, 0.6])
    c = compute_gamma("coupled", mask, waad=waad, fai=fai)
    assert c.delta[0].tolist() == [4, 8, 7, 0, 1, 5, 7, 3, 0, 0]
    assert c.anchor[0].nonzero().flatten().tolist() == [3, 4, 7, 9]
    assert c.dominated[0].nonzero().flatten().tolist() == [3, 4, 7]
    assert c.intro[0].tolist() == [0, 2, 0, 0, 0, 0, 1, 0, 0, 0]
    assert c.gamma[0].tolist() == [1, 1.5, 1, 1.25, 1.25, 1, 1.25, 1.25, 1, 1.5]


def test_coupled_indicator_terms_add_up():
    # same WAAD; anchors {1, 3, 4, 7}: t=1 has window Δ[0] = 4 < τ_Δ = 5, so it stays a plain anchor (1.5) and is
    # also the introductory token of anchors 3 and 4 (+2 · α · 0.5): γ_1 = 2.0
    waad, mask = one(COUPLED_WAAD)
    fai, _ = one([0, 0.95, 0, 0.9, 0.8, 0, 0, 0.7, 0, 0])
    c = compute_gamma("coupled", mask, waad=waad, fai=fai)
    assert c.dominated[0].nonzero().flatten().tolist() == [3, 4, 7]
    assert c.gamma[0].tolist() == [1, 2.0, 1, 1.25, 1.25, 1, 1.25, 1.25, 1, 1]


def test_coupled_alpha_moves_the_share_of_the_bonus():
    waad, mask = one(COUPLED_WAAD)
    fai, _ = one([0, 0, 0, 0.9, 0.8, 0, 0, 0.7, 0, 0.6])
    c = compute_gamma("coupled", mask, waad=waad, fai=fai, alpha=1.0)
    assert c.gamma[0].tolist() == [1, 2.0, 1, 1, 1, 1, 1.5, 1, 1, 1.5]
    c0 = compute_gamma("coupled", mask, waad=waad, fai=fai, alpha=0.0)
    assert c0.gamma[0].tolist() == [1, 1, 1, 1.5, 1.5, 1, 1, 1.5, 1, 1.5]


# WAAD = [0, 4, 0, 4, 0] -> Δ = [4, 4, 4, 4, 0]; TopQ(Δ, 2) = {0, 1}, τ_Δ = 4; τ_waad = sorted[2] = 0
# anchors {4, 2}: t=4 window Δ[1..3] all 4 -> intro = earliest = 1; t=2 window clipped to Δ[0..1] -> intro = 0
def test_coupled_window_ties_and_clipping_at_the_response_start():
    waad, mask = one([0, 4, 0, 4, 0])
    fai, _ = one([0, 0, 0.5, 0, 0.9])
    c = compute_gamma("coupled", mask, waad=waad, fai=fai)
    assert c.dominated[0].tolist() == [False, False, True, False, True]
    assert c.intro[0].tolist() == [1, 1, 0, 0, 0]
    assert c.gamma[0].tolist() == [1.25, 1.25, 1.25, 1, 1.25]


def test_coupled_anchor_at_first_token_is_never_dominated():
    # WAAD = [0, 9, 9, 9] -> Δ = [9, 0, 0, 0], τ_Δ = 0, τ_waad = 9; anchors {0, 1}. t=0 has an empty window: a plain
    # anchor (1.5). t=1 (WAAD 9 <= 9, window Δ[0] = 9 >= 0) is dominated with intro 0: γ_0 = 1.5 + 0.25, γ_1 = 1.25
    waad, mask = one([0, 9, 9, 9])
    fai, _ = one([1.0, 0.5, 0, 0])
    c = compute_gamma("coupled", mask, waad=waad, fai=fai)
    assert c.dominated[0].tolist() == [False, True, False, False]
    assert c.gamma[0].tolist() == [1.75, 1.25, 1, 1]


def test_controls():
    ent, mask = one([0.1, 2.0, 0.3, 1.5, 0.2])
    fai, _ = one([0.9, 0.1, 0.5, 0.05, 0.3])
    assert compute_gamma("entropy", mask, entropy=ent).gamma[0].tolist() == [1, 1.5, 1, 1.5, 1]
    # bottom-q of FAI: the two smallest
    assert compute_gamma("bottom", mask, fai=fai).gamma[0].tolist() == [1, 1.5, 1, 1.5, 1]
    assert compute_gamma("uniform", mask).gamma[0].tolist() == [1.5] * 5
    assert compute_gamma("none", mask).gamma[0].tolist() == [1.0] * 5
    waad, _ = one([1, 5, 2, 2, 8])  # Δ = [4, 3, 0, 6, 0]: bottom 2 -> the two zeros, earliest first
    assert compute_gamma("bottom", mask, waad=waad, bottom_score="local").gamma[0].tolist() == [1, 1, 1.5, 1, 1.5]


def test_random_control_is_reproducible_from_a_seed():
    mask = torch.ones(4, 50, dtype=torch.bool)
    a = compute_gamma("random", mask, generator=torch.Generator().manual_seed(7)).gamma
    b = compute_gamma("random", mask, generator=torch.Generator().manual_seed(7)).gamma
    c = compute_gamma("random", mask, generator=torch.Generator().manual_seed(8)).gamma
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert (a > 1).sum(-1).tolist() == [20] * 4


def test_short_responses_get_gamma_one():
    mask = T([[1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    for strategy in ("uniform", "random", "local", "global", "coupled", "entropy"):
        c = compute_gamma(strategy, mask, waad=torch.rand(2, 3), fai=torch.rand(2, 3), entropy=torch.rand(2, 3))
        assert torch.equal(c.gamma, torch.ones(2, 3)), strategy


def test_errors_name_the_missing_or_bad_tensor():
    mask = torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="'fai'"):
        compute_gamma("global", mask)
    with pytest.raises(ValueError, match="'waad'"):
        compute_gamma("coupled", mask, fai=torch.rand(1, 4))
    with pytest.raises(ValueError, match="'entropy'"):
        compute_gamma("entropy", mask)
    with pytest.raises(ValueError, match="'waad' must have the response_mask shape"):
        compute_gamma("local", mask, waad=torch.rand(1, 5))
    with pytest.raises(ValueError, match="NaN"):
        compute_gamma("local", mask, waad=T([[0.0, float("nan"), 1.0, 2.0]]))
    with pytest.raises(ValueError, match="algorithm.rhythm.strategy='bogus': allowed values are"):
        compute_gamma("bogus", mask)
    # NaN on padding is fine: it is never read
    pad = T([[1, 1, 1, 0]], dtype=torch.bool)
    compute_gamma("local", pad, waad=T([[0.0, 1.0, 3.0, float("nan")]]))


# -------------------------------------------------------------------------------------------------- properties
STRATS = ("coupled", "local", "global", "entropy", "bottom", "uniform", "random", "none")


@st.composite
def batches(draw):
    b = draw(st.integers(1, 4))
    t = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    lengths = [draw(st.integers(0, t)) for _ in range(b)]
    mask = torch.zeros(b, t, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    # quantised values produce ties, the hard case for rankings
    waad = torch.randint(0, 11, (b, t), generator=g).float()
    fai = torch.randint(0, 6, (b, t), generator=g).float() / 5
    ent = torch.rand(b, t, generator=g)
    return mask, waad, fai, ent, seed


def run_all(mask, waad, fai, ent, seed, strategy, **kw):
    return compute_gamma(
        strategy, mask, waad=waad, fai=fai, entropy=ent, generator=torch.Generator().manual_seed(seed), **kw
    )


@settings(max_examples=60, deadline=None)
@given(batches(), st.sampled_from(STRATS), st.sampled_from([0.1, 0.4, 1.0]))
def test_gamma_at_least_one_and_one_off_the_mask(batch, strategy, q):
    mask, waad, fai, ent, seed = batch
    c = run_all(mask, waad, fai, ent, seed, strategy, top_q=q)
    assert bool((c.gamma >= 1).all())
    assert bool((c.gamma[~mask] == 1).all())
    n = mask.sum(-1)
    if strategy in ("local", "global", "entropy", "bottom", "random"):
        expected = torch.where(n >= 2, torch.ceil(q * n.double() - 1e-9).long(), torch.zeros_like(n))
        assert torch.equal((c.gamma > 1).sum(-1), expected)


@settings(max_examples=60, deadline=None)
@given(batches(), st.sampled_from(STRATS), st.integers(0, 12), st.data())
def test_same_response_same_gamma_wherever_padding_puts_it(batch, strategy, pad, data):
    mask, waad, fai, ent, seed = batch
    ref = run_all(mask[:1], waad[:1], fai[:1], ent[:1], seed, strategy).gamma[0][mask[0]]
    n, t = int(mask[0].sum()), mask.shape[1]
    # left and right padding in a longer row (masked holes inside a response split it into assistant turns, which
    # changes ΔWAAD and the coupled look-back: tests/test_credit_multiturn_on_cpu.py)
    width = t + pad
    start = data.draw(st.integers(0, width - n))
    layout = list(range(start, start + n))
    new_mask = torch.zeros(1, width, dtype=torch.bool)
    new_mask[0, layout] = True

    def place(x):
        out = torch.full((1, width), float("nan"))
        out[0, layout] = x[0][mask[0]]
        return out

    got = run_all(new_mask, place(waad[:1]), place(fai[:1]), place(ent[:1]), seed, strategy)
    assert torch.equal(got.gamma[0][new_mask[0]], ref)
    assert bool((got.gamma[0][~new_mask[0]] == 1).all())


@settings(max_examples=40, deadline=None)
@given(batches(), st.sampled_from(("coupled", "uniform")), st.sampled_from(("both", "positive", "negative")))
def test_sign_modes(batch, strategy, sign):
    mask, waad, fai, ent, seed = batch
    gamma = run_all(mask, waad, fai, ent, seed, strategy).gamma
    adv = (torch.randint(-2, 3, (mask.shape[0], 1)).float() * mask).expand_as(mask)
    out = apply_gamma(adv, gamma, sign)
    pos, neg = adv > 0, adv < 0
    scaled = adv * gamma
    assert torch.equal(out[pos], scaled[pos] if sign in ("both", "positive") else adv[pos])
    assert torch.equal(out[neg], scaled[neg] if sign in ("both", "negative") else adv[neg])
    assert bool((out[adv == 0] == 0).all())


def test_apply_gamma_rejects_unknown_sign():
    with pytest.raises(ValueError, match="algorithm.rhythm.sign"):
        apply_gamma(torch.ones(1, 2), torch.ones(1, 2), "up")


def test_coupled_reference_loop_matches_vectorised():
    """An independent per-token loop of the coupled rule (spec Sec. 4) against the vectorised code."""
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        n = int(torch.randint(2, 30, (1,), generator=g))
        waad = torch.randint(0, 6, (n,), generator=g).float()
        fai = torch.randint(0, 4, (n,), generator=g).float()
        q, k, alpha, amp = 0.4, 3, 0.5, 1.5
        delta = [abs(float(waad[i] - waad[i + 1])) for i in range(n - 1)] + [0.0]
        top = math.ceil(q * n - 1e-9)

        def topq(x, top=top, n=n):
            return set(sorted(range(n), key=lambda j: (-x[j], j))[:top])

        t_loc, t_glob = topq(delta), topq(fai.tolist())
        tau_d = min(delta[i] for i in t_loc)
        tau_w = sorted(waad.tolist())[(n - 1) // 2]
        gamma = [1.0] * n
        for t in sorted(t_glob):
            win = list(range(max(0, t - k), t))
            if win and waad[t] <= tau_w and max(delta[u] for u in win) >= tau_d:
                intro = max(win, key=lambda u: (delta[u], -u))
                gamma[t] += (1 - alpha) * (amp - 1)
                gamma[intro] += alpha * (amp - 1)
            else:
                gamma[t] += amp - 1
        c = compute_gamma("coupled", torch.ones(1, n, dtype=torch.bool), waad=waad[None], fai=fai[None])
        assert c.gamma[0].tolist() == pytest.approx(gamma, abs=1e-6)


# ------------------------------------------------------------------------------ against the spec-only reference
# verl_rhythm.testing.credit_ref: γ per response in plain loops from spec Sec. 4, sharing no code with the product.
# Single-turn rows only (the valid tokens of a row are one block: left/right padding, no holes).


def test_credit_reference_by_hand():
    """The reference itself on the hand-computed coupled case above, and TopQ's ceil and tie rule."""
    from verl_rhythm.testing import credit_ref

    fai = [0, 0, 0, 0.9, 0.8, 0, 0, 0.7, 0, 0.6]
    assert credit_ref.gamma_row("coupled", COUPLED_WAAD, fai) == [1, 1.5, 1, 1.25, 1.25, 1, 1.25, 1.25, 1, 1.5]
    assert credit_ref.gamma_row("coupled", COUPLED_WAAD, fai, alpha=1.0) == [1, 2.0, 1, 1, 1, 1, 1.5, 1, 1, 1.5]
    assert credit_ref.gamma_row("local", [1, 5, 2, 2, 8, 3]) == [1.5, 1, 1, 1.5, 1.5, 1]
    assert credit_ref.gamma_row("global", None, [0.2, 0.5, 0.2, 0.2, 0.1]) == [1.5, 1.5, 1, 1, 1]
    assert credit_ref.top_q(list(range(10)), 0.7) == set(range(3, 10))  # ceil(7.000000000000001) is still 7
    assert credit_ref.gamma_row("coupled", [3.0], [1.0]) == [1.0]
    with pytest.raises(ValueError, match="contiguous"):
        credit_ref.gamma_batch("local", T([[1, 0, 1]], dtype=torch.bool), waad=torch.rand(1, 3))


@st.composite
def single_turn_batches(draw):
    """Rows whose valid tokens are one block anywhere in the row; quantised statistics (ties; exact arithmetic)."""
    b, t = draw(st.integers(1, 5)), draw(st.integers(1, 48))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    mask = torch.zeros(b, t, dtype=torch.bool)
    for i in range(b):
        n = draw(st.integers(0, t))
        start = draw(st.integers(0, t - n))
        mask[i, start : start + n] = True
    waad = torch.randint(0, 41, (b, t), generator=g).float() / 4
    fai = torch.randint(0, 9, (b, t), generator=g).float() / 8
    return mask, waad, fai


@settings(max_examples=150, deadline=None)
@given(
    single_turn_batches(),
    st.sampled_from(("local", "global", "coupled")),
    st.sampled_from((0.1, 0.25, 0.3, 0.4, 0.7, 1.0)),
    st.sampled_from((1.25, 1.5, 2.0)),
    st.sampled_from((0.0, 0.25, 0.5, 0.75, 1.0)),
    st.integers(1, 5),
)
def test_compute_gamma_equals_the_spec_reference(batch, strategy, q, amp, alpha, window):
    from verl_rhythm.testing import credit_ref

    mask, waad, fai = batch
    knobs = dict(top_q=q, gamma_amp=amp, alpha=alpha, intro_window=window)
    got = compute_gamma(strategy, mask, waad=waad, fai=fai, **knobs).gamma
    want = credit_ref.gamma_batch(strategy, mask, waad, fai, **knobs)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("strategy", ["local", "global", "coupled"])
def test_compute_gamma_equals_the_spec_reference_on_defaults(strategy):
    """Default knobs, continuous statistics, long responses (padding on either side)."""
    from verl_rhythm.testing import credit_ref

    g = torch.Generator().manual_seed(5)
    mask = torch.zeros(6, 300, dtype=torch.bool)
    for i, (a, n) in enumerate([(0, 300), (0, 211), (89, 211), (40, 2), (10, 1), (150, 97)]):
        mask[i, a : a + n] = True
    waad, fai = torch.rand(6, 300, generator=g) * 10, torch.rand(6, 300, generator=g)
    got = compute_gamma(strategy, mask, waad=waad, fai=fai).gamma
    torch.testing.assert_close(got.double(), credit_ref.gamma_batch(strategy, mask, waad, fai), atol=1e-6, rtol=0)
    assert bool((got > 1).any())
