# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Credit reference: γ of one response at a time, in plain Python loops, written from the spec (Sec. 4) alone.

The ground truth :func:`verl_rhythm.credit.compute_gamma` and the estimator are tested against. Like
:mod:`verl_rhythm.testing.dense` it shares no code with the product: it imports the standard library and torch (for
the batch wrapper) only, and reads the knobs as plain numbers. Written for clarity, not speed. Never call it in
training.

Scope: single-turn rows only, i.e. each row's valid tokens are one contiguous block (a response, possibly after left
or before right padding). A row with holes (multi-turn) raises.

Spec Sec. 4 and its project decisions, per response of n valid tokens x_0..x_{n-1} (indices are response positions):

- TopQ(x, q): the k = ceil(q · n) tokens with the largest x, ties to the earlier position.
- Δ_t = |WAAD_t − WAAD_{t+1}|, Δ_{n-1} = 0.
- local: γ = 1 + (γ_amp − 1) · 1[t ∈ TopQ(Δ, q)]; global: the same with TopQ(FAI, q).
- coupled: an anchor t ∈ T_glob = TopQ(FAI, q) is dominated when WAAD_t <= τ_waad (the lower median WAAD) and
  max_{u in [t−k, t−1]} Δ_u >= τ_Δ (the smallest Δ in TopQ(Δ, q)), the window clipped at the response start (empty
  at t = 0: never dominated); its introductory token is the argmax of Δ over the window, ties to the earliest.
  γ = 1 + (γ_amp−1)·1[T_glob \\ D] + (1−α)(γ_amp−1)·1[D] + α(γ_amp−1)·#{dominated anchors whose intro is t}.
- n < 2: γ = 1 everywhere.
- Sign modes: ``both`` scales every advantage, ``positive`` those > 0, ``negative`` those < 0.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

GAMMA_AMP = 1.5
TOP_Q = 0.4
ALPHA = 0.5
INTRO_WINDOW = 3


def top_q(x: list[float], q: float) -> set[int]:
    """TopQ: the ceil(q · n) largest entries of ``x`` (q read as its decimal value), ties to the earlier position."""
    k = math.ceil(Fraction(repr(float(q))) * len(x))
    return set(sorted(range(len(x)), key=lambda i: (-x[i], i))[:k])


def deltas(waad: list[float]) -> list[float]:
    """Δ_t = |WAAD_t − WAAD_{t+1}|, 0 for the last token."""
    return [abs(waad[t] - waad[t + 1]) for t in range(len(waad) - 1)] + [0.0] * min(1, len(waad))


def gamma_row(
    strategy: str,
    waad: list[float] | None = None,
    fai: list[float] | None = None,
    *,
    top_q_share: float = TOP_Q,
    gamma_amp: float = GAMMA_AMP,
    alpha: float = ALPHA,
    intro_window: int = INTRO_WINDOW,
) -> list[float]:
    """γ of one response's valid tokens (in order) under ``local``, ``global`` or ``coupled``.

    Args:
        strategy: ``local``, ``global`` or ``coupled``.
        waad: WAAD of each valid token (local, coupled).
        fai: FAI of each valid token (global, coupled).
        top_q_share, gamma_amp, alpha, intro_window: q, γ_amp, α, k.

    Returns:
        γ per valid token.
    """
    n = len(waad if waad is not None else fai)
    if n < 2:
        return [1.0] * n
    bonus = gamma_amp - 1.0
    gamma = [1.0] * n
    if strategy == "local":
        for t in top_q(deltas(waad), top_q_share):
            gamma[t] += bonus
        return gamma
    if strategy == "global":
        for t in top_q(fai, top_q_share):
            gamma[t] += bonus
        return gamma
    if strategy != "coupled":
        raise ValueError(f"the credit reference covers local, global and coupled, not {strategy!r}")
    delta = deltas(waad)
    preplan = top_q(delta, top_q_share)
    anchors = top_q(fai, top_q_share)
    tau_delta = min(delta[u] for u in preplan)
    tau_waad = sorted(waad)[(n - 1) // 2]
    for t in sorted(anchors):
        window = list(range(max(0, t - intro_window), t))
        dominated = bool(window) and waad[t] <= tau_waad and max(delta[u] for u in window) >= tau_delta
        if not dominated:
            gamma[t] += bonus
            continue
        intro = window[0]
        for u in window:
            if delta[u] > delta[intro]:
                intro = u
        gamma[t] += (1.0 - alpha) * bonus
        gamma[intro] += alpha * bonus
    return gamma


def valid_block(row_mask: list[bool]) -> list[int]:
    """The positions of a row's valid tokens; raises unless they are one contiguous block."""
    where = [i for i, v in enumerate(row_mask) if v]
    if where and where != list(range(where[0], where[-1] + 1)):
        raise ValueError("the credit reference handles single-turn rows only: valid tokens must be contiguous")
    return where


def gamma_batch(
    strategy: str,
    response_mask: torch.Tensor,
    waad: torch.Tensor | None = None,
    fai: torch.Tensor | None = None,
    **knobs,
) -> torch.Tensor:
    """:func:`gamma_row` for every row of a ``(B, T)`` batch; γ = 1 off the mask.

    Args:
        strategy: ``local``, ``global`` or ``coupled``.
        response_mask: ``(B, T)`` bool/int, each row's valid tokens one contiguous block.
        waad, fai: ``(B, T)`` statistics (read on the valid tokens only).
        **knobs: ``top_q``, ``gamma_amp``, ``alpha``, ``intro_window``.

    Returns:
        ``(B, T)`` float64 γ.
    """
    names = {"top_q": "top_q_share", "gamma_amp": "gamma_amp", "alpha": "alpha", "intro_window": "intro_window"}
    kwargs = {names[k]: v for k, v in knobs.items()}
    out = torch.ones(response_mask.shape, dtype=torch.float64)
    for b, row in enumerate(response_mask.bool().tolist()):
        where = valid_block(row)
        if not where:
            continue
        w = None if waad is None else [float(waad[b, i]) for i in where]
        f = None if fai is None else [float(fai[b, i]) for i in where]
        for i, g in zip(where, gamma_row(strategy, w, f, **kwargs), strict=True):
            out[b, i] = g
    return out


def scale_advantages(advantages: torch.Tensor, gamma: torch.Tensor, sign: str = "both") -> torch.Tensor:
    """Ã = A · γ on the advantages the sign mode selects, token by token; ``(B, T)`` float64."""
    out = advantages.double().clone()
    for b in range(out.shape[0]):
        for t in range(out.shape[1]):
            a = float(advantages[b, t])
            if sign == "both" or (sign == "positive" and a > 0) or (sign == "negative" and a < 0):
                out[b, t] = a * float(gamma[b, t])
            elif sign not in ("both", "positive", "negative"):
                raise ValueError(f"sign={sign!r}: the spec's modes are both, positive, negative")
    return out
