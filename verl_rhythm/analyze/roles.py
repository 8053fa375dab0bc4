# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""γ of each strategy and the token roles, from the trainer's own credit code.

Every number here comes from :func:`verl_rhythm.credit.rhythm_credit`, the function the ``rhythm`` advantage
estimator calls (without importing verl): the statistics are laid out exactly as verl's response tensors
``(bs, response_length)`` (each token at its own position, right-padded) and the strategy knobs come from the same
:class:`RhythmConfig`. Which strategies are shown comes from the registry (:mod:`verl_rhythm.credit.registry`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from verl_rhythm.config import RhythmConfig
from verl_rhythm.credit import rhythm_credit, strategies

ROLES_FROM = "coupled"
"""The strategy whose credit shows the roles (preplan, anchor, dominated, introductory): it computes them all."""


def paper_strategies() -> tuple[str, ...]:
    """The registered strategies of kind ``paper`` (the paper's three), always shown in the report."""
    return tuple(name for name, s in strategies().items() if s.kind == "paper")


@dataclass
class ResponseCredit:
    """Roles and γ of one response's n tokens.

    Attributes:
        gamma: strategy name → ``(n,)`` fp32 γ.
        selected: ``(n,)`` bool, the tokens the configured strategy amplified by rank (its top q).
        preplan: ``(n,)`` bool, TopQ(ΔWAAD, q): preplan tokens.
        anchor: ``(n,)`` bool, TopQ(FAI, q): anchor tokens.
        dominated: ``(n,)`` bool, the coupled rule's locally dominated anchors D.
        intro: ``(n,)`` int64, how many dominated anchors name this token as their introductory token.
        delta: ``(n,)`` fp32, ΔWAAD.
    """

    gamma: dict[str, torch.Tensor]
    selected: torch.Tensor
    preplan: torch.Tensor
    anchor: torch.Tensor
    dominated: torch.Tensor
    intro: torch.Tensor
    delta: torch.Tensor


def shown_strategies(cfg: RhythmConfig) -> list[str]:
    """The strategies whose γ the report shows: the paper's three, plus ``cfg.strategy`` if it is another."""
    shown = list(paper_strategies())
    return shown + ([cfg.strategy] if cfg.strategy not in shown else [])


def response_batch(values: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad per-response vectors into verl's response layout.

    Args:
        values: one ``(n_i,)`` tensor per response.

    Returns:
        ``(x, response_mask)``: ``(bs, max n_i)`` fp32 (0 on padding) and the bool mask.
    """
    width = max((v.numel() for v in values), default=0)
    x = torch.zeros(len(values), width, dtype=torch.float32)
    mask = torch.zeros(len(values), width, dtype=torch.bool)
    for i, v in enumerate(values):
        x[i, : v.numel()] = v.float()
        mask[i, : v.numel()] = True
    return x, mask


def credit_for_responses(
    cfg: RhythmConfig, waad: list[torch.Tensor], fai: list[torch.Tensor], entropy: list[torch.Tensor]
) -> list[ResponseCredit]:
    """γ under each shown strategy and the coupled rule's roles, for a batch of responses.

    Args:
        cfg: the rhythm settings (``top_q``, ``gamma_amp``, ``alpha``, ``intro_window``, ...).
        waad: one ``(n_i,)`` WAAD vector per response (response tokens only).
        fai: one ``(n_i,)`` FAI vector per response.
        entropy: one ``(n_i,)`` entropy vector per response (for the ``entropy`` control).

    Returns:
        one :class:`ResponseCredit` per response.
    """
    w, mask = response_batch(waad)
    f, _ = response_batch(fai)
    e, _ = response_batch(entropy)
    credits = {
        name: rhythm_credit(dataclasses.replace(cfg.credit, strategy=name), mask, waad=w, fai=f, entropy=e)
        for name in shown_strategies(cfg)
    }
    roles = (
        credits[ROLES_FROM]
        if ROLES_FROM in credits
        else rhythm_credit(dataclasses.replace(cfg.credit, strategy=ROLES_FROM), mask, waad=w, fai=f, entropy=e)
    )
    mine = credits[cfg.strategy]
    out = []
    for i in range(len(waad)):
        n = waad[i].numel()
        out.append(
            ResponseCredit(
                gamma={name: c.gamma[i, :n].clone() for name, c in credits.items()},
                selected=mine.selected[i, :n].clone(),
                preplan=roles.preplan[i, :n].clone(),
                anchor=roles.anchor[i, :n].clone(),
                dominated=roles.dominated[i, :n].clone(),
                intro=roles.intro[i, :n].clone(),
                delta=roles.delta[i, :n].clone(),
            )
        )
    return out
