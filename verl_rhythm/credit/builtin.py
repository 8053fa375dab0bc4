# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The built-in strategies (spec Sec. 4 and its controls), each declared once with the statistics it needs.

Each ``select`` gets a :class:`~verl_rhythm.credit.gamma.Tokens` (compacted rows) and returns the ``(B, T)`` bool
tokens that get γ_amp, or a :class:`~verl_rhythm.credit.gamma.Selection` when it shapes γ itself.
"""

from __future__ import annotations

import torch

from verl_rhythm.credit.gamma import Selection, Tokens, coupled_sets
from verl_rhythm.credit.registry import register_strategy


@register_strategy(
    "coupled",
    needs=("waad", "fai"),
    kind="paper",
    summary=(
        "anchors get γ_amp, except locally dominated ones, which pass a share α of their bonus to their "
        "introductory (preplan) token"
    ),
)
def coupled(tokens: Tokens) -> Selection:
    s = tokens.settings
    dominated, intro = coupled_sets(
        tokens.waad, tokens.delta, tokens.preplan, tokens.anchor, tokens.valid, s.intro_window, tokens.segment
    )
    bonus = s.gamma_amp - 1.0
    gamma = (
        1.0
        + bonus * (tokens.anchor & ~dominated).float()
        + (1.0 - s.alpha) * bonus * dominated.float()
        + s.alpha * bonus * intro.float()
    )
    return Selection(selected=tokens.anchor, gamma=gamma, dominated=dominated, intro=intro)


@register_strategy("local", needs=("waad",), kind="paper", summary="preplan tokens: TopQ(ΔWAAD, q)")
def local(tokens: Tokens) -> torch.Tensor:
    return tokens.preplan


@register_strategy("global", needs=("fai",), kind="paper", summary="anchor tokens: TopQ(FAI, q)")
def global_(tokens: Tokens) -> torch.Tensor:
    return tokens.anchor


@register_strategy("none", kind="baseline", summary="γ = 1: plain GRPO through the same code path")
def none(tokens: Tokens) -> torch.Tensor:
    return tokens.none()


@register_strategy("random", summary="as many tokens, drawn at random (seeded from seed + step · S + sub-step)")
def random(tokens: Tokens) -> torch.Tensor:
    return tokens.top(tokens.rand())


@register_strategy("entropy", needs=("entropy",), summary="TopQ(token entropy, q)")
def entropy(tokens: Tokens) -> torch.Tensor:
    return tokens.top(tokens.entropy)


def _bottom_needs(settings) -> tuple[str, ...]:
    return ("waad",) if getattr(settings, "bottom_score", "global") == "local" else ("fai",)


@register_strategy(
    "bottom",
    needs=_bottom_needs,
    summary=("the bottom q of a strategy's score: ΔWAAD (bottom_score=local) or FAI (bottom_score=global)"),
)
def bottom(tokens: Tokens) -> torch.Tensor:
    score = tokens.delta if tokens.settings.bottom_score == "local" else tokens.fai
    return tokens.top(-score)


@register_strategy("uniform", summary="every token (q = 1: the step-size control)")
def uniform(tokens: Tokens) -> torch.Tensor:
    return tokens.valid
