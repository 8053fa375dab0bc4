# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The Table-2 statistics of ``verl-rhythm analyze`` against brute-force versions of their written definitions."""

import itertools
import math
import random

import pytest
import torch

from verl_rhythm.analyze.coupling import hit_probability, peaks, pooled_coupling, sequence_coupling


def peaks_brute(x: list[float], radius: int, top_q: float) -> list[int]:
    """The definition in the report, one clause at a time, in plain Python."""
    n = len(x)
    k = math.ceil(top_q * n - 1e-9)
    ranked = sorted(range(n), key=lambda i: (-x[i], i))[:k]  # top q, ties to the earlier position
    out = []
    for t in range(n):
        lo, hi = max(0, t - radius), min(n - 1, t + radius)
        earlier_ok = all(x[u] < x[t] for u in range(lo, t))
        later_ok = all(x[u] <= x[t] for u in range(t + 1, hi + 1))
        if earlier_ok and later_ok and t in ranked and x[t] > min(x):
            out.append(t)
    return out


def random_signal(rng: random.Random, n: int) -> list[float]:
    levels = rng.choice([3, 6, 1000])  # few levels force ties
    return [float(rng.randrange(levels)) for _ in range(n)]


@pytest.mark.parametrize("radius,top_q", [(1, 0.4), (2, 0.2), (3, 1.0)])
def test_peaks_match_the_written_definition(radius, top_q):
    rng = random.Random(radius)
    for _ in range(300):
        x = random_signal(rng, rng.randrange(1, 40))
        got = peaks(torch.tensor(x), radius, top_q).nonzero().flatten().tolist()
        assert got == peaks_brute(x, radius, top_q), x


def test_flat_signal_has_no_peak():
    assert not peaks(torch.full((12,), 3.0), 2, 0.5).any()


@pytest.mark.parametrize("n", [1, 4, 7])
def test_hit_probability_equals_enumeration(n):
    for m in range(0, n + 1):
        for w in range(0, n + 1):
            window = set(range(w))  # any fixed window of w positions
            combos = list(itertools.combinations(range(n), m))
            expected = sum(bool(window & set(c)) for c in combos) / len(combos)
            assert hit_probability(n, m, w) == pytest.approx(expected, abs=1e-12), (n, m, w)


def test_sequence_coupling_counts_and_baseline_by_brute_force():
    rng = random.Random(7)
    window, radius, top_q = 3, 2, 0.3
    parts, hits, base, n_fai, ent_peak, n_wp, ent_all, n_all = [], 0, 0.0, 0, 0.0, 0, 0.0, 0
    for _ in range(50):
        n = rng.randrange(2, 60)
        waad, fai = random_signal(rng, n), random_signal(rng, n)
        ent = [rng.random() * 3 for _ in range(n)]
        part = sequence_coupling(torch.tensor(waad), torch.tensor(fai), torch.tensor(ent), window, radius, top_q)
        wp, fp = peaks_brute(waad, radius, top_q), peaks_brute(fai, radius, top_q)
        assert part.waad_peaks == wp and part.fai_peaks == fp
        for s in fp:
            win = range(max(0, s - window), s + 1)
            hits += any(u in wp for u in win)
            # the baseline, by averaging over every placement of len(wp) random peaks
            combos = list(itertools.combinations(range(n), len(wp))) if len(wp) <= 2 else None
            if combos is not None:
                base += sum(any(u in c for u in win) for c in combos) / len(combos)
            else:
                base += hit_probability(n, len(wp), len(win))
        n_fai += len(fp)
        ent_peak += sum(float(torch.tensor(ent, dtype=torch.float32)[i]) for i in wp)
        n_wp += len(wp)
        ent_all += float(torch.tensor(ent, dtype=torch.float32).double().sum())
        n_all += n
        parts.append(part)
    pooled = pooled_coupling(parts, window, radius, top_q)
    assert pooled["fai_follows_waad_hits"] == hits
    assert pooled["fai_follows_waad"] == pytest.approx(hits / n_fai)
    assert pooled["fai_follows_waad_random"] == pytest.approx(base / n_fai)
    assert pooled["entropy_ratio"] == pytest.approx((ent_peak / n_wp) / (ent_all / n_all))
    assert pooled["tokens"] == n_all and pooled["waad_peaks"] == n_wp and pooled["fai_peaks"] == n_fai


def test_pooled_coupling_without_peaks_reports_none():
    part = sequence_coupling(torch.ones(5), torch.ones(5), torch.ones(5), 3, 2, 0.2)
    pooled = pooled_coupling([part], 3, 2, 0.2)
    assert pooled["fai_follows_waad"] is None and pooled["entropy_ratio"] is None


def test_sequence_coupling_names_mismatched_shapes():
    with pytest.raises(ValueError, match="waad, fai and entropy"):
        sequence_coupling(torch.ones(5), torch.ones(4), torch.ones(5), 3, 2, 0.2)
