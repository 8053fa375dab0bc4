# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""γ under a run's credit settings: the function the estimator and ``verl-rhythm analyze`` both call."""

from __future__ import annotations

import torch

from verl_rhythm.credit.gamma import Credit, gamma_for
from verl_rhythm.credit.settings import CreditSettings


def rhythm_credit(
    cfg: CreditSettings,
    response_mask: torch.Tensor,
    waad: torch.Tensor | None = None,
    fai: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    *,
    step: int = 0,
) -> Credit:
    """γ for a batch under ``cfg``.

    Random scores (the ``random`` control, or any strategy that draws) come from
    ``torch.Generator().manual_seed(cfg.seed + step)``: a function of the seed and the training step only, so the
    picked tokens differ from step to step and a resumed run draws exactly what an uninterrupted one drew.

    Args:
        cfg: the run's credit settings (``RhythmConfig.credit``).
        response_mask: ``(B, T)`` valid response tokens.
        waad: ``(B, T)`` WAAD, or ``None``.
        fai: ``(B, T)`` FAI, or ``None``.
        entropy: ``(B, T)`` token entropy, or ``None``.
        step: the training step (verl's ``global_steps``); >= 0.

    Raises:
        ValueError: a statistic the strategy needs is missing or not finite, or ``step`` is negative.
    """
    if step < 0:
        raise ValueError(f"step={step}: the training step must be >= 0")
    device = response_mask.device
    return gamma_for(
        cfg,
        response_mask,
        waad=None if waad is None else waad.to(device),
        fai=None if fai is None else fai.to(device),
        entropy=None if entropy is None else entropy.to(device),
        generator=torch.Generator().manual_seed(cfg.seed + int(step)),
    )


def credit_metrics(credit: Credit, response_mask: torch.Tensor) -> dict[str, float]:
    """``rhythm/*`` scalars of one batch: share of amplified tokens, mean γ, |D| and |I(D)| per response, over the
    tokens of ``response_mask`` (the trained ones).

    Args:
        credit: from :func:`rhythm_credit`.
        response_mask: ``(B, T)``.
    """
    mask = response_mask.bool().to(credit.gamma.device)
    n_tok = max(int(mask.sum()), 1)
    n_seq = max(int(mask.any(-1).sum()), 1)
    g = credit.gamma.float()
    return {
        "rhythm/amplified_share": float(((g > 1.0) & mask).sum()) / n_tok,
        "rhythm/gamma_mean": float((g * mask).sum()) / n_tok,
        "rhythm/gamma_max": float(g[mask].max()) if mask.any() else 1.0,
        "rhythm/anchor_share": float((credit.anchor & mask).sum()) / n_tok,
        "rhythm/preplan_share": float((credit.preplan & mask).sum()) / n_tok,
        "rhythm/dominated_per_response": float((credit.dominated & mask).sum()) / n_seq,
        "rhythm/intro_per_response": float(((credit.intro > 0) & mask).sum()) / n_seq,
    }
